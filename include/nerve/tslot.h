/* tslot.h -- one object per calling thread, all freed together.
 *
 * Objects that are not thread-safe (a hiredis connection, a Lua state) are
 * given one per thread instead of being shared behind a mutex. A tslot
 * creates the calling thread's object on first use and remembers every object
 * it created, so that tslot_free can destroy them all once the threads that
 * used them are done (CivetWeb workers live as long as the server).
 *
 * Thread-safety: tslot_get from any thread; tslot_new/tslot_free from one.
 * Ownership: the tslot owns every object; callers borrow them.
 */
#ifndef NERVE_TSLOT_H
#define NERVE_TSLOT_H

typedef struct tslot tslot;

/* CREATE(UD) makes a thread's object (NULL on failure); DESTROY frees one
 * (called by tslot_free only). NULL on OOM. */
tslot *tslot_new(void *(*create)(void *ud), void (*destroy)(void *obj), void *ud);

/* The calling thread's object, created on first use; NULL on failure. */
void *tslot_get(tslot *s);

/* Destroy every object and the slot. No thread may use it afterwards. NULL is fine. */
void tslot_free(tslot *s);

#endif
