/*
 * user - leave root for the configured unprivileged user (see user.h).
 */
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "conf.h"
#include "log.h"
#include "user.h"
#include "util.h"

static uid_t user_become_caps(const char *name, gid_t extra, int keep_lease)
{
	if (geteuid() != 0 || name == NULL || name[0] == '\0')
		return (uid_t)-1;
	errno = 0;
	struct passwd *pw = getpwnam(name);
	if (pw == NULL)
		die_perm(EXIT_CONFIG, "user \"%s\": no such user%s%s", name, errno ? ": " : "",
		         errno ? strerror(errno) : "");
	if (pw->pw_uid == 0)
		return (uid_t)-1;
	uid_t uid = pw->pw_uid;
	gid_t gid = pw->pw_gid;
	/* Order matters: supplementary groups and the gid can only be changed while we are
	 * still root, so setuid comes last. setuid as root sets the real, effective and
	 * saved uid together. */
	/* The user's own supplementary groups (/etc/group), as systemd's User= gives them:
	 * an administrator adds the user to a group on purpose - postdrop, so that the SMTP
	 * connector reaches Postfix's re-injection socket in public/ (docs/postfix.md) - and
	 * a drop to the primary group alone would silently undo that. Plus extra. */
	gid_t groups[256];
	int ng = (int)ARRAY_LEN(groups) - 1;
	if (getgrouplist(name, gid, groups, &ng) < 0)
		die_temp(NULL, "user %s is in more than %zu groups", name, ARRAY_LEN(groups) - 1);
	int have = 0;
	for (int i = 0; i < ng; i++)
		have |= groups[i] == extra;
	if (extra != (gid_t)-1 && !have)
		groups[ng++] = extra;
	/* KEEPCAPS: setuid from root then keeps the permitted set (and clears the effective
	 * one), so that CAP_LEASE alone can be taken back below; everything else goes. */
	if (keep_lease && prctl(PR_SET_KEEPCAPS, 1L, 0L, 0L, 0L) < 0)
		die_temp(NULL, "prctl(PR_SET_KEEPCAPS): %s", strerror(errno));
	if (setgroups((size_t)ng, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
		die_temp(NULL, "cannot drop privileges to %s: %s", name, strerror(errno));
	if (keep_lease) {
		struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
		struct __user_cap_data_struct d[2] = {{0}};
		d[0].effective = d[0].permitted = d[0].inheritable = 1u << CAP_LEASE;
		/* Ambient needs it permitted and inheritable; then execve keeps it for a
		 * non-root program without file capabilities. */
		if (syscall(SYS_capset, &h, d) < 0 ||
		    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, (long)CAP_LEASE, 0L, 0L) < 0 ||
		    prctl(PR_SET_KEEPCAPS, 0L, 0L, 0L, 0L) < 0)
			die_temp(NULL, "cannot keep CAP_LEASE as %s: %s", name, strerror(errno));
	}
	if (setuid(0) == 0)
		die_temp(NULL, "privileges were not dropped: setuid(0) still works");
	return uid;
}

uid_t user_become(const char *name, gid_t extra)
{
	return user_become_caps(name, extra, 0);
}

uid_t user_become_with_lease(const char *name)
{
	return user_become_caps(name, (gid_t)-1, 1);
}

void user_root_check(const struct conf *c, const char *prog)
{
	if (geteuid() != 0 || (c->user != NULL && c->user[0] != '\0'))
		return;
	/* Everything a stage runs (the MIME parser, the scanners) would run as root: only on
	 * purpose, and never quietly. */
	if (!c->allow_root)
		die_perm(
		    EXIT_CONFIG,
		    "%s: refusing to run as root with no user: set user = \"NAME\" in %s (the "
		    "spool then belongs to it), or allow_root = true to run as root on purpose",
		    prog, c->path ? c->path : "the config");
	log_warn(NULL,
	         "%s: RUNNING AS ROOT (allow_root = true and no user): the MIME parser and every "
	         "scanner run as root; set user = \"NAME\" for production",
	         prog);
}
