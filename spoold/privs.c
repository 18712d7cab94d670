/*
 * privs - what spoold does as root, at start, before it leaves root for good (spoold.h).
 *
 * Trust: the spool and everything in it belong to the configured user, who may be hostile
 * (a stage or a scanner it runs may be exploited). So root works on descriptors only, never
 * follows a name the user controls, and never changes an inode that the user could have
 * made appear in the spool (a hard link, a symlink, a file in inbound/).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export.h"
#include "log.h"
#include "spoold.h"
#include "user.h"
#include "util.h"

#define PRIVS_HARDLINKS "/proc/sys/fs/protected_hardlinks"

void privs_check_kernel(void)
{
	if (geteuid() != 0)
		return;
	const char *path = PRIVS_HARDLINKS;
#ifdef SPOOLD_CRASH_POINTS
	/* Test builds only: the sysctl is machine-wide, a test must not flip it. */
	const char *alt = getenv("SPOOLD_TEST_PROTECTED_HARDLINKS");
	if (alt && alt[0])
		path = alt;
#endif
	char v[16] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, v, sizeof v - 1) : -1;
	int err = errno;
	if (fd >= 0)
		close(fd);
	if (n < 0)
		die_perm(EXIT_CONFIG, "cannot read %s: %s; refusing to run as root without it",
		         path, strerror(err));
	v[n] = '\0';
	/* Without it, the spool's user could hard-link any file of the system (/etc/shadow)
	 * into the spool, and whatever root does there would reach that file. */
	if (strcmp(v, "1\n") != 0 && strcmp(v, "1") != 0)
		die_perm(
		    EXIT_CONFIG,
		    "fs.protected_hardlinks is not 1 (%s says \"%.4s\"): refusing to run as root; "
		    "set it (sysctl -w fs.protected_hardlinks=1, the Debian default)",
		    path, v[0] == '\n' ? "" : v);
}

int privs_target(const struct conf *c, uid_t *uid, gid_t *gid)
{
	if (geteuid() != 0 || c->user == NULL || c->user[0] == '\0')
		return 0;
	errno = 0;
	struct passwd *pw = getpwnam(c->user);
	if (pw == NULL)
		die_perm(EXIT_CONFIG, "user \"%s\": no such user", c->user);
	if (pw->pw_uid == 0)
		return 0;
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	return 1;
}

/* Give one inode, open as fd, to the user: only a directory, or a regular file with a
 * single name. A file with st_nlink > 1 may be a hard link to a file outside the spool;
 * anything else (symlink, socket, fifo, device) is never ours to change. */
static void privs_give(int fd, const char *path, const char *name, uid_t uid, gid_t gid)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		log_warn(NULL, "cannot stat %s/%s: %s", path, name, strerror(errno));
		return;
	}
	if (!S_ISDIR(st.st_mode) && !(S_ISREG(st.st_mode) && st.st_nlink == 1))
		return;
	if (st.st_uid == uid && st.st_gid == gid)
		return;
	/* AT_EMPTY_PATH: the very inode we just checked, not a name looked up again. */
	if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH) < 0)
		log_warn(NULL, "cannot chown %s/%s: %s", path, name, strerror(errno));
}

/* Below dfd: directories and single-named regular files go to the user; nothing is
 * followed. Only for directories the spool itself made (not inbound/, where anyone who may
 * drop mail puts files). Bounded depth: entries are at most outbox/<conn>/<qid>/<file>. */
static void privs_chown_below(int dfd, const char *path, uid_t uid, gid_t gid, int depth)
{
	if (depth > 4)
		return;
	int fd = dup(dfd);
	if (fd < 0)
		return;
	/* fdopendir reads from the current offset: start from the top. */
	lseek(fd, 0, SEEK_SET);
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		/* O_PATH|O_NOFOLLOW opens a symlink itself, never its target. */
		int sub = openat(dirfd(d), de->d_name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0)
			continue;
		struct stat st;
		if (fstat(sub, &st) == 0 && S_ISDIR(st.st_mode)) {
			close(sub);
			sub = openat(dirfd(d), de->d_name,
			             O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				continue;
			privs_give(sub, path, de->d_name, uid, gid);
			privs_chown_below(sub, de->d_name, uid, gid, depth + 1);
		} else {
			privs_give(sub, path, de->d_name, uid, gid);
		}
		close(sub);
	}
	closedir(d);
}

/* 1 if user (with primary group pgid) is a member of gid. */
static int privs_user_in(const char *user, gid_t pgid, gid_t gid)
{
	gid_t groups[256];
	int ng = (int)ARRAY_LEN(groups);
	if (getgrouplist(user, pgid, groups, &ng) < 0)
		return 0;
	for (int i = 0; i < ng; i++)
		if (groups[i] == gid)
			return 1;
	return 0;
}

/* One directory, by descriptor: owner, group and mode. */
static void privs_dir_set(int fd, const char *root, const char *name, uid_t uid, gid_t gid,
                          mode_t mode)
{
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISDIR(st.st_mode)) {
		log_warn(NULL, "cannot stat %s/%s: %s", root, name, strerror(errno));
		return;
	}
	if ((st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) < 0)
		log_warn(NULL, "cannot chown %s/%s: %s", root, name, strerror(errno));
	if ((st.st_mode & 07777) != mode && fchmod(fd, mode) < 0)
		log_warn(NULL, "cannot chmod %s/%s: %s", root, name, strerror(errno));
}

/*
 * The spool of a separated pipeline (docs/SECURITY.md, "Who may do what where"). Every
 * stage user is a member of the spool user's group; the state directories are that
 * group's, writable by it and set-group-ID (2770), so every entry made in them belongs
 * to the group whoever made it, and a stage can move another stage's entry on. Trust does
 * not come from the directories but from who owns each file (the readers check: lib/
 * spool.c spool_entry_file_trusted). Two directories are narrower:
 *   outbox/ and outbox/<conn>/ belong to the connectors' group (2770): the router and the
 *     connectors are its members, the splitter and the scanner-runner are not, so they
 *     cannot put anything into an outbox, whatever they own;
 *   run/ is sticky as well (3770): a stage may add its own files there (its metrics, the
 *     runner's cache and pool state), but not remove or replace another user's.
 * Only directories the spool itself made are changed, never an entry's files: their
 * owners are what the stages trust. The stage users are checked here, at start, so that a
 * missing group membership is one clear error instead of a stage that fails at its first
 * message.
 */
static void privs_separate(const struct conf *c, struct spool *sp, uid_t uid, gid_t gid)
{
	const struct conf_role_user *conn = &c->roles[ROLE_CONNECTOR];
	const struct conf_role_user *route = &c->roles[ROLE_ROUTER];
	for (int r = ROLE_SPOOL + 1; r < ROLE__COUNT; r++)
		if (!privs_user_in(c->roles[r].name, c->roles[r].gid, gid))
			die_perm(
			    EXIT_CONFIG,
			    "%s \"%s\" is not a member of the spool's group (gid %ld, the "
			    "primary group of user \"%s\"): add it (dist/spoold.sysusers: m %s %s)",
			    conf_role_name((enum conf_role)r), c->roles[r].name, (long)gid, c->user,
			    c->roles[r].name, c->user);
	gid_t ogid = conn->gid;
	if (route->uid != conn->uid && !privs_user_in(route->name, route->gid, ogid))
		die_perm(
		    EXIT_CONFIG,
		    "router_user \"%s\" is not a member of the connectors' group (gid %ld, the "
		    "primary group of connector_user \"%s\"): it could not fill the outboxes",
		    route->name, (long)ogid, conn->name);
	for (int i = 0; i < SD__COUNT; i++) {
		const char *n = spool_dir_name((enum spool_dir)i);
		if (i == SD_OUTBOX)
			privs_dir_set(sp->fd[i], sp->root, n, uid, ogid, 02770);
		else
			privs_dir_set(sp->fd[i], sp->root, n, uid, gid,
			              i == SD_RUN ? 03770 : 02770);
	}
	/* outbox/<conn>/ as the router made them, and run/'s own subdirectories. */
	static const enum spool_dir below[] = {SD_OUTBOX, SD_RUN};
	for (size_t b = 0; b < ARRAY_LEN(below); b++) {
		DIR *d = NULL;
		int fd = dup(sp->fd[below[b]]);
		if (fd >= 0 && lseek(fd, 0, SEEK_SET) == 0)
			d = fdopendir(fd);
		if (!d) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			int sub = openat(dirfd(d), de->d_name,
			                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				continue;
			privs_dir_set(sub, spool_dir_name(below[b]), de->d_name, uid,
			              below[b] == SD_OUTBOX ? ogid : gid, 02770);
			close(sub);
		}
		closedir(d);
	}
	if (conn->uid != uid && !privs_user_in(c->user, gid, ogid))
		log_warn(NULL,
		         "user \"%s\" is not a member of the connectors' group (that of "
		         "connector_user \"%s\"): spoolctl will not see into the outboxes",
		         c->user, conn->name);
}

gid_t privs_control_gid(const struct conf *c)
{
	if (c->control_group == NULL || c->control_group[0] == '\0')
		return (gid_t)-1;
	errno = 0;
	struct group *g = getgrnam(c->control_group);
	if (g == NULL)
		die_perm(EXIT_CONFIG, "control_group \"%s\": no such group", c->control_group);
	return g->gr_gid;
}

gid_t privs_metrics_gid(const struct conf *c)
{
	if (c->metrics.group == NULL || c->metrics.group[0] == '\0')
		return (gid_t)-1;
	struct group *g = getgrnam(c->metrics.group);
	if (g == NULL)
		die_perm(EXIT_CONFIG, "metrics.group \"%s\": no such group", c->metrics.group);
	return g->gr_gid;
}

/* export/ (docs/FLEET.md) is a state directory like tmp/: every stage writes its records
 * there, the exporter removes them. */
static void privs_export(const struct conf *c, struct spool *sp, uid_t uid, gid_t gid)
{
	int fd = c->fleet.enabled ? export_dir_open(sp, 1) : -1;
	if (fd < 0)
		return;
	if (c->separated) {
		privs_dir_set(fd, sp->root, "export", uid, gid, 02770);
	} else {
		privs_give(fd, sp->root, "export", uid, gid);
		privs_chown_below(fd, "export", uid, gid, 0);
	}
	close(fd);
}

static void privs_control_modes(const struct conf *c, struct spool *sp, uid_t uid,
                                gid_t control_gid);

void privs_drop(const struct conf *c, struct spool *sp, gid_t control_gid)
{
	uid_t uid;
	gid_t gid;
	if (!privs_target(c, &uid, &gid)) {
		/* No drop (root with allow_root, or a plain user): the control group must
		 * still reach the socket. */
		privs_control_modes(c, sp, (uid_t)-1, control_gid);
		return;
	}
	/* The spool's skeleton goes to the user (a spool made by root, or by an older
	 * version), and what a root-run pipeline left in the state directories. inbound/'s
	 * contents stay as they are: whoever may drop mail puts files there, and a file dropped
	 * by root stays root's (the splitter then reports it and moves it to badmail/). */
	privs_give(sp->root_fd, sp->root, ".", uid, gid);
	privs_export(c, sp, uid, gid);
	if (c->separated) {
		privs_separate(c, sp, uid, gid);
		goto modes;
	}
	for (int i = 0; i < SD__COUNT; i++) {
		privs_give(sp->fd[i], sp->root, spool_dir_name((enum spool_dir)i), uid, gid);
		if (i != SD_INBOUND)
			privs_chown_below(sp->fd[i], spool_dir_name((enum spool_dir)i), uid, gid,
			                  0);
	}
modes:
	privs_control_modes(c, sp, uid, control_gid);
	user_become(c->user, privs_metrics_gid(c));
	log_info(NULL, "running as user %s (uid %ld)", c->user, (long)uid);
}

/* 0750: the spool holds other people's mail. With a control_group, its members must
 * reach run/control, and nothing else: the root becomes 0711 (anyone may pass through,
 * no one but the user may list it) and run/ 0710 with that group, while every state
 * directory stays 0750 with the user's own group, so the group can use the socket
 * without being able to read a single message. Separated, the stages are the spool's
 * group and must open the root and work in run/ (3770): the control group then passes
 * through both as "other" (0751, 3771), and the socket (0660, control_group) is the one
 * thing in run/ it may use. */
static void privs_control_modes(const struct conf *c, struct spool *sp, uid_t uid,
                                gid_t control_gid)
{
	int group_ok = control_gid != (gid_t)-1;
	mode_t root_mode = !group_ok ? 0750 : c->separated ? 0751 : 0711;
	if (fchmod(sp->root_fd, root_mode) < 0)
		log_warn(NULL, "cannot chmod %s: %s", sp->root, strerror(errno));
	if (group_ok && c->separated && fchmod(sp->fd[SD_RUN], 03771) < 0)
		log_warn(NULL, "cannot open %s/run to control_group: %s", sp->root,
		         strerror(errno));
	if (group_ok && !c->separated &&
	    (fchown(sp->fd[SD_RUN], uid, control_gid) < 0 || fchmod(sp->fd[SD_RUN], 0710) < 0))
		log_warn(NULL, "cannot give %s/run to control_group: %s", sp->root,
		         strerror(errno));
}
