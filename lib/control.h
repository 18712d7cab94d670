/*
 * control - the control socket run/control between spoolctl and spoold.
 *
 * Protocol: one request line per connection, "<command> <stage>\n" (start, stop, restart,
 * pause, resume), answered by one line "ok <text>\n" or "error <text>\n", then spoold
 * closes. Who may connect is decided by the socket's mode: 0600 (spoold's user only) or
 * 0660 with the group control_group.
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

/* Bind and listen on root/run/control (replacing a stale one), non-blocking, close-on-exec,
 * mode 0600, or 0660 with group gid when gid != (gid_t)-1. Returns the fd. */
int control_listen(const char *root, gid_t gid);
/* Send "cmd stage\n" and read the one-line reply into reply (without the newline).
 * timeout_ms bounds the wait for the reply. 0 or -1. */
int control_request(const char *root, const char *cmd, const char *stage, struct buf *reply,
                    int timeout_ms);

#endif
