/*
 * user - leave root for the configured unprivileged user, for good.
 *
 * user_become(name, extra) does nothing when the process is not root or name is NULL or
 * "". Otherwise it sets the supplementary groups to the user's groups (its primary group
 * and those /etc/group gives it, as systemd's User= does; plus extra, unless it is
 * (gid_t)-1: a group spoold writes a file for, the metrics file's), the gid,
 * then the uid (real, effective and saved), and checks that setuid(0) now fails.
 * Returns the uid it became, or (uid_t)-1 when nothing was done.
 *
 * DIAGNOSTICS: an unknown user dies permanent (78: the config names it); a failing
 * setgroups/setgid/setuid, or a setuid(0) that still works, dies temporary (75): a
 * program told to run as a user must never go on as root.
 */
#ifndef SPOOLD_USER_H
#define SPOOLD_USER_H

#include <sys/types.h>

uid_t user_become(const char *name, gid_t extra);

struct conf;
/* At the start of spoold, every stage and every connector: running as root with no user
 * configured dies 78 naming allow_root, unless c->allow_root; with it, one loud warning.
 * Nothing when not root or when a user is set (spoold drops to it; a stage started by a
 * dropped spoold is not root). */
void user_root_check(const struct conf *c, const char *prog);

#endif
