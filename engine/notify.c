/* notify.c -- sd_notify messages for systemd (see notify.h). */
#include "nerve/notify.h"

#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "nerve/log.h"

/* sd_notify returns 0 when NOTIFY_SOCKET is unset: only < 0 is a failure. */
static void sent(int rc, const char *what) {
    if (rc < 0) log_warn("notify", "sd_notify %s failed: errno=%d", what, -rc);
}

void notify_ready(const char *status) {
    sent(sd_notifyf(0, "READY=1\nMAINPID=%d\nSTATUS=%s", (int)getpid(), status ? status : ""),
         "READY");
}

void notify_reloading(unsigned long long now_us) {
    sent(sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading config and rules",
                    now_us),
         "RELOADING");
}

void notify_stopping(void) {
    sent(sd_notify(0, "STOPPING=1\nSTATUS=stopping"), "STOPPING");
}
