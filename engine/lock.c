/* lock.c -- per-key distributed lock in Redis (see lock.h).
 *
 * SET NX PX to take, compare-and-delete / compare-and-pexpire scripts to
 * release / extend. Waiting retries with exponential backoff and full jitter
 * (sleep a random time in [0, backoff]) so that contending instances spread
 * out instead of hammering Redis in lockstep.
 */
#include "nerve/lock.h"

#include "nerve/clock.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static rds_script release_script = RDS_SCRIPT_INIT(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  return redis.call('DEL', KEYS[1])\n"
    "end\n"
    "return 0\n");

static rds_script extend_script = RDS_SCRIPT_INIT(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "end\n"
    "return 0\n");

/* 64 random bits from a per-thread xorshift seeded by getrandom(). Used for
 * jitter only; tokens come straight from getrandom(). */
static unsigned long long jitter_rand(void) {
    static _Thread_local unsigned long long s;
    if (!s) {
        if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s || !s)
            s = (unsigned long long)time(NULL) * 2654435761u + 1;
    }
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

/* Tokens only need to be unique among holders, so instead of a syscall per
 * token each thread draws 64 random bits once from getrandom() and appends a
 * counter: 128 bits, never repeated within the thread, and colliding across
 * threads or instances only if two 64-bit random draws collide. */
void lock_token_new(char token[LOCK_TOKEN_LEN + 1]) {
    static _Thread_local unsigned long long seed, counter;
    while (!seed) {
        if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
            if (errno == EINTR) continue;
            seed = jitter_rand() ^ (unsigned long long)(uintptr_t)&seed;
        }
    }
    counter++;
    snprintf(token, LOCK_TOKEN_LEN + 1, "%016llx%016llx", seed, counter);
}

lock_status lock_try(rds_client *c, const char *key, const char *token, int ttl_ms,
                     char *err, size_t errlen) {
    redisReply *r = rds_command(c, "SET %s %s NX PX %d", key, token, ttl_ms);
    if (!r) {
        snprintf(err, errlen, "redis: %s", rds_errstr(c));
        return LOCK_ERR;
    }
    lock_status st;
    if (r->type == REDIS_REPLY_STATUS) {
        st = LOCK_OK;
    } else if (r->type == REDIS_REPLY_NIL) {
        st = LOCK_TIMEOUT;
    } else {
        snprintf(err, errlen, "redis: %s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply to SET");
        st = LOCK_ERR;
    }
    freeReplyObject(r);
    return st;
}

static long long mono_us(void) { return (long long)(clock_now_ns() / 1000u); }

lock_status lock_acquire(rds_client *c, const char *key, int ttl_ms, int max_wait_ms,
                         char token[LOCK_TOKEN_LEN + 1], char *err, size_t errlen) {
    lock_token_new(token);
    long long deadline = mono_us() + (long long)max_wait_ms * 1000;
    long long backoff_us = 200;
    for (;;) {
        lock_status st = lock_try(c, key, token, ttl_ms, err, errlen);
        if (st != LOCK_TIMEOUT) return st;
        long long now = mono_us();
        if (now >= deadline) return LOCK_TIMEOUT;
        /* "Equal" jitter: uniform in [backoff/2, backoff], capped at the deadline;
         * keeps a floor so retries are never a busy spin. */
        long long sleep_us = backoff_us / 2 + (long long)(jitter_rand() % (unsigned long long)(backoff_us / 2 + 1));
        if (sleep_us > deadline - now) sleep_us = deadline - now;
        struct timespec ts = { sleep_us / 1000000, (sleep_us % 1000000) * 1000 };
        nanosleep(&ts, NULL);
        if (backoff_us < 50000) backoff_us *= 2;
    }
}

static int compare_and(rds_client *c, rds_script *s, const char *key, const char *token,
                       const char *arg2) {
    const char *argv[3] = { key, token, arg2 };
    redisReply *r = rds_eval(c, s, 1, arg2 ? 3 : 2, argv, NULL);
    if (!r) return -1;
    int rc = r->type == REDIS_REPLY_INTEGER ? (r->integer ? 1 : 0) : -1;
    freeReplyObject(r);
    return rc;
}

int lock_release(rds_client *c, const char *key, const char *token) {
    return compare_and(c, &release_script, key, token, NULL);
}

int lock_extend(rds_client *c, const char *key, const char *token, int ttl_ms) {
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    return compare_and(c, &extend_script, key, token, ttl);
}
