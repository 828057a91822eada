/* park.h -- a thread sleeps on a word of its own until another changes it.
 *
 * Why: a thread that waits for a result computed by another (a sale in a
 * batch, a command in a shared pipeline) and is woken by a condition
 * variable must take that variable's mutex again before it can return; with
 * 64 workers that re-take made the mutex the most contended lock of the
 * process (issue 12). Parked on its own word (a Linux futex) a waiter is
 * woken alone and returns without touching any lock.
 *
 * The word lives in the waiter's memory (usually its stack). Whoever changes
 * it must not read the waiter's memory after the change (the waiter may have
 * returned); park_wake may still be called on the address: a wake reaching a
 * word that is gone is harmless, and every waiter here tolerates a spurious
 * wake. Thread-safe.
 */
#ifndef NERVE_PARK_H
#define NERVE_PARK_H

/* Sleep while *W == VAL; returns *W's new value (acquire). */
int park_while(_Atomic int *w, int val);

/* Store V into *W (release) and wake its waiter. */
void park_set(_Atomic int *w, int v);

/* Wake W's waiter after a change made otherwise (a compare-and-swap). */
void park_wake(_Atomic int *w);

#endif
