/* park.c -- a thread sleeps on a word of its own (park.h). */
#include "nerve/park.h"

#include <linux/futex.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

int park_while(_Atomic int *w, int val) {
    int st;
    while ((st = atomic_load_explicit(w, memory_order_acquire)) == val)
        syscall(SYS_futex, (int *)w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
    return st;
}

void park_wake(_Atomic int *w) {
    syscall(SYS_futex, (int *)w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

void park_set(_Atomic int *w, int v) {
    atomic_store_explicit(w, v, memory_order_release);
    park_wake(w);
}
