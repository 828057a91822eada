/* lock.c -- per-key distributed lock in Redis (see lock.h).
 *
 * SET NX PX to take, compare-and-delete / compare-and-pexpire scripts to
 * release / extend. Waiting retries with capped exponential backoff and
 * equal jitter (backoff.h: a random time in [backoff/2, backoff], so never a
 * busy spin) so that contending instances spread out instead of hammering
 * Redis in lockstep.
 */
#include "nerve/lock.h"

#include "nerve/backoff.h"
#include "nerve/clock.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Waits between tries, in microseconds: 200 us doubling to 50 ms. */
static const backoff_policy wait_backoff = { 200, 50000, 2.0, BACKOFF_JITTER_EQUAL };

static rds_script release_script = RDS_SCRIPT_INIT("if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                                   "  return redis.call('DEL', KEYS[1])\n"
                                                   "end\n"
                                                   "return 0\n");

static rds_script extend_script = RDS_SCRIPT_INIT(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "end\n"
    "return 0\n");

/* 128 bits from arc4random_buf (the kernel's CSPRNG; it cannot fail), so two
 * holders anywhere in the fleet share a token only with probability 2^-128.
 * Debian 12's glibc makes each arc4random_buf a getrandom system call: one
 * per sale on a 1,000-SKU load (strace, issue 12). So each thread draws 16
 * tokens' worth at a time and hands them out once each. */
void lock_token_new(char token[LOCK_TOKEN_LEN + 1]) {
    static const char hex[] = "0123456789abcdef";
    static _Thread_local unsigned char pool[16 * (LOCK_TOKEN_LEN / 2)];
    static _Thread_local size_t used = sizeof pool;
    if (used + LOCK_TOKEN_LEN / 2 > sizeof pool) {
        arc4random_buf(pool, sizeof pool);
        used = 0;
    }
    const unsigned char *b = pool + used;
    used += LOCK_TOKEN_LEN / 2;
    for (size_t i = 0; i < LOCK_TOKEN_LEN / 2; i++) {
        token[2 * i] = hex[b[i] >> 4];
        token[2 * i + 1] = hex[b[i] & 15];
    }
    token[LOCK_TOKEN_LEN] = 0;
}

lock_status lock_try(rds_client *c, const char *key, const char *token, int ttl_ms, char *err,
                     size_t errlen) {
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
        snprintf(err, errlen, "redis: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply to SET");
        st = LOCK_ERR;
    }
    freeReplyObject(r);
    return st;
}

static long long mono_us(void) {
    return (long long)(clock_now_ns() / 1000u);
}

lock_status lock_acquire(rds_client *c, const char *key, int ttl_ms, int max_wait_ms,
                         char token[LOCK_TOKEN_LEN + 1], char *err, size_t errlen) {
    lock_token_new(token);
    long long deadline = mono_us() + (long long)max_wait_ms * 1000;
    for (int attempt = 1;; attempt++) {
        lock_status st = lock_try(c, key, token, ttl_ms, err, errlen);
        if (st != LOCK_TIMEOUT) return st;
        long long now = mono_us();
        if (now >= deadline) return LOCK_TIMEOUT;
        long long sleep_us = backoff_delay(&wait_backoff, attempt);
        if (sleep_us > deadline - now) sleep_us = deadline - now;
        struct timespec ts = { sleep_us / 1000000, (sleep_us % 1000000) * 1000 };
        nanosleep(&ts, NULL);
    }
}

static lock_cas compare_and(rds_client *c, rds_script *s, const char *key, const char *token,
                            const char *arg2) {
    const char *argv[3] = { key, token, arg2 };
    redisReply *r = rds_eval(c, s, 1, arg2 ? 3 : 2, argv, NULL);
    if (!r) return LOCK_CAS_ERROR;
    lock_cas rc = r->type != REDIS_REPLY_INTEGER ? LOCK_CAS_ERROR
                  : r->integer                   ? LOCK_CAS_DONE
                                                 : LOCK_CAS_NOT_OWNER;
    freeReplyObject(r);
    return rc;
}

lock_cas lock_release(rds_client *c, const char *key, const char *token) {
    return compare_and(c, &release_script, key, token, NULL);
}

lock_cas lock_extend(rds_client *c, const char *key, const char *token, int ttl_ms) {
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    return compare_and(c, &extend_script, key, token, ttl);
}
