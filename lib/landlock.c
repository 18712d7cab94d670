/*
 * landlock - see landlock.h.
 */
#include "landlock.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/landlock.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Newer than Debian 12's linux-libc-dev: defined here with their kernel values. */
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#define LANDLOCK_NET_BIND_TCP    (1ULL << 0)
#define LANDLOCK_NET_CONNECT_TCP (1ULL << 1)

/* struct landlock_ruleset_attr as of ABI 4; the kernel takes the shorter ABI 1 form too. */
struct landlock_attr {
	uint64_t handled_access_fs;
	uint64_t handled_access_net;
};

static int landlock_fs_rule(int ruleset, int dirfd, uint64_t allowed)
{
	struct landlock_path_beneath_attr pb = {.allowed_access = allowed, .parent_fd = dirfd};
	return (int)syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &pb, 0);
}

static void landlock_probe(void)
{
#ifdef SPOOLD_CRASH_POINTS
	const char *p = getenv("SPOOLD_TEST_LANDLOCK_PROBE");
	if (p == NULL || p[0] == '\0')
		return;
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		log_warn(NULL, "landlock probe: opened %s", p);
		close(fd);
	} else {
		log_info(NULL, "landlock probe: cannot open %s: %s", p, strerror(errno));
	}
#endif
}

int landlock_restrict_spool(const struct spool *sp, const enum spool_dir *dirs, size_t n,
                            const enum spool_dir *look, size_t nlook)
{
	long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
	if (abi < 0 && (errno == ENOSYS || errno == EOPNOTSUPP)) {
		log_warn(NULL,
		         "Landlock is not available (%s): running without the file "
		         "access restriction (Linux 5.19 or later, with lsm=landlock)",
		         strerror(errno));
		return 0;
	}
	if (abi < 0)
		die_temp(NULL, "landlock_create_ruleset (version): %s", strerror(errno));
	/* ABI 1 denies every rename between directories, the spool's very protocol. */
	if (abi < 2) {
		log_warn(NULL,
		         "Landlock ABI %ld cannot allow renames between directories: running "
		         "without the file access restriction (needs Linux 5.19 or later)",
		         abi);
		return 0;
	}
	uint64_t all = (LANDLOCK_ACCESS_FS_REFER << 1) - 1;
	if (abi >= 3)
		all |= LANDLOCK_ACCESS_FS_TRUNCATE;
	/* In the spool: everything a stage does with files and directories. Not executing,
	 * and no device nodes (only root could make one; one dropped into inbound/ is left
	 * there, unclaimed, with a warning each scan). Fifos, sockets and symlinks are
	 * allowed because a Landlock rename needs the right to make what is moved, and the
	 * splitter moves whatever a local user dropped into inbound/ on to badmail/ as it is. */
	uint64_t spool_rights = all & ~(LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_MAKE_CHAR |
	                                LANDLOCK_ACCESS_FS_MAKE_BLOCK);
	uint64_t read_rights = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
	struct landlock_attr attr = {.handled_access_fs = all};
	size_t attr_len = sizeof attr.handled_access_fs;
	if (abi >= 4) {
		/* No rule allows any port: no TCP at all. */
		attr.handled_access_net = LANDLOCK_NET_BIND_TCP | LANDLOCK_NET_CONNECT_TCP;
		attr_len = sizeof attr;
	}
	int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, attr_len, 0);
	if (rs < 0)
		die_temp(NULL, "landlock_create_ruleset: %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		if (landlock_fs_rule(rs, sp->fd[dirs[i]], spool_rights) < 0)
			die_temp(NULL, "landlock_add_rule %s/%s: %s", sp->root,
			         spool_dir_name(dirs[i]), strerror(errno));
	/* export/, where every stage writes the fleet's event records (lib/export.h), when
	 * the fleet is configured and spoold made it. A record is an observation for the
	 * database, never an instruction to a stage, so a confined parser that forges one
	 * misleads a search at worst; it moves no mail. */
	int xfd = openat(sp->root_fd, "export", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (xfd >= 0 && landlock_fs_rule(rs, xfd, spool_rights) < 0)
		die_temp(NULL, "landlock_add_rule %s/export: %s", sp->root, strerror(errno));
	if (xfd >= 0)
		close(xfd);
	/* Directories it only looks into (whether a queue ID is in use): listing, no file. */
	for (size_t i = 0; i < nlook; i++)
		/* fd -1: a directory this user may not enter anyway (outbox/, separated). */
		if (sp->fd[look[i]] >= 0 &&
		    landlock_fs_rule(rs, sp->fd[look[i]], LANDLOCK_ACCESS_FS_READ_DIR) < 0)
			die_temp(NULL, "landlock_add_rule %s/%s: %s", sp->root,
			         spool_dir_name(look[i]), strerror(errno));
	/* Read-only, for what the C library and GLib open late: iconv modules (a charset
	 * first seen in a message), locale data, /etc/localtime's target in zoneinfo. */
	int usr = open("/usr", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (usr < 0 || landlock_fs_rule(rs, usr, read_rights) < 0)
		die_temp(NULL, "landlock_add_rule /usr: %s", strerror(errno));
	close(usr);
#ifdef __SANITIZE_ADDRESS__
	/* ASan builds only: LeakSanitizer reads /proc/<pid>/task and maps at exit, and fails
	 * the process (exit 1) when it cannot. Production builds do not get this rule. */
	int proc = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (proc < 0 || landlock_fs_rule(rs, proc, read_rights) < 0)
		die_temp(NULL, "landlock_add_rule /proc: %s", strerror(errno));
	close(proc);
#endif
	/* Required for an unprivileged process, and right anyway: nothing this process
	 * starts may gain privileges. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die_temp(NULL, "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(errno));
	if (syscall(SYS_landlock_restrict_self, rs, 0) < 0)
		die_temp(NULL, "landlock_restrict_self: %s", strerror(errno));
	close(rs);
	log_info(NULL,
	         "Landlock ABI %ld: file access restricted to %zu spool directories (and "
	         "reading /usr)",
	         abi, n);
	landlock_probe();
	return 1;
}
