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
/* user_become(name, -1), keeping one capability: CAP_LEASE, effective and ambient, so
 * that the programs the process executes have it too. For the splitter's keeper: the
 * splitter takes a read lease on each file it splits, to know that no one still writes
 * it, and a file another user dropped can be leased only with CAP_LEASE. Without it the
 * splitter can only wait until the file has rested (splitter.c); all it adds is the
 * right to delay, by the lease-break time, another process's open for writing of a file
 * the splitter may read. Dies temporary (75) if the capability cannot be kept. */
uid_t user_become_with_lease(const char *name);

struct conf;
/* At the start of spoold, every stage and every connector: running as root with no user
 * configured dies 78 naming allow_root, unless c->allow_root; with it, one loud warning.
 * Nothing when not root or when a user is set (spoold drops to it; a stage started by a
 * dropped spoold is not root). */
void user_root_check(const struct conf *c, const char *prog);

#endif
