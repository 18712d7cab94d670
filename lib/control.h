/*
 * control - the control socket run/control between spoolctl and spoold.
 *
 * Protocol: one request line per connection, "<command> <stage>\n" (start, stop, restart,
 * pause, resume), answered by one line "ok <text>\n" or "error <text>\n", then spoold
 * closes. Who may connect is decided by the socket's mode: 0600 (spoold's user only) or
 * 0660 with the group control_group. spoold reads a request with one overall deadline
 * (CONTROL_DEADLINE_MS) and logs the peer's uid (SO_PEERCRED).
 *
 * DIAGNOSTICS
 *   Both functions return -1 with errno set and log nothing. control_request's ENOENT or
 *   ECONNREFUSED means spoold is not running.
 */
#ifndef SPOOLD_CONTROL_H
#define SPOOLD_CONTROL_H

#include <sys/types.h>

#include "util.h"

#define CONTROL_NAME     "control"
#define CONTROL_LINE_MAX 256
/* From accept to the reply: a client that has not sent its line by then is dropped. */
#define CONTROL_DEADLINE_MS 2000

/* Bind and listen on run/control (run_fd: the spool's run/), replacing whatever is there
 * without following it; non-blocking, close-on-exec, with mode (0600, or 0660 for a
 * control_group), owner and gid ((uid_t)-1, (gid_t)-1: left as created). The socket is bound in a
 * fresh private directory in run/ and renamed into place, so that root (at start) never resolves a
 * name the spool's owner could have planted. Returns the fd. */
int control_listen(int run_fd, uid_t owner, gid_t gid, mode_t mode);
/* Send "cmd stage\n" and read the one-line reply into reply (without the newline).
 * timeout_ms bounds the wait for the reply. 0 or -1. */
int control_request(const char *root, const char *cmd, const char *stage, struct buf *reply,
                    int timeout_ms);

#endif
