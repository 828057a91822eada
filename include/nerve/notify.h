/* notify.h -- tells systemd (Type=notify) where the daemon is: ready,
 * reloading, stopping, with a one-line status `systemctl status` shows.
 *
 * Through libsystemd's sd_notify: a datagram to $NOTIFY_SOCKET, and nothing
 * at all when it is unset (started by hand, by make run, by the tests), so
 * the calls need no guard. Errors are logged once per call and never stop
 * the daemon: systemd would then time the start out, which says more.
 *
 * Thread-safety: every function (sd_notify opens its own socket per call).
 * Ownership: the strings are the caller's.
 */
#ifndef NERVE_NOTIFY_H
#define NERVE_NOTIFY_H

/* READY=1 with MAINPID (this process) and STATUS=STATUS: listening and the
 * rules loaded, or a reload finished (after notify_reloading). */
void notify_ready(const char *status);

/* RELOADING=1 with MONOTONIC_USEC=NOW_US (CLOCK_MONOTONIC µs: systemd 253
 * wants both) at the start of a reload; notify_ready ends it. */
void notify_reloading(unsigned long long now_us);

/* STOPPING=1 once shutdown has begun. */
void notify_stopping(void);

#endif
