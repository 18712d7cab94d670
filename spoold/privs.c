/*
 * privs - run as a dedicated user when started as root (see spoold.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "spoold.h"
#include "user.h"
#include "util.h"

/* Walk the tree below dfd without following symlinks: an entry planted as a symlink
 * must not make root chown something outside the spool. */
static void privs_chown_tree(int dfd, const char *path, uid_t uid, gid_t gid, int depth)
{
	if (fchown(dfd, uid, gid) < 0)
		log_warn(NULL, "cannot chown %s: %s", path, strerror(errno));
	if (depth > 8)
		return;
	int fd = dup(dfd);
	if (fd < 0)
		return;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat st;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dirfd(d), de->d_name,
			                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0) {
				privs_chown_tree(sub, de->d_name, uid, gid, depth + 1);
				close(sub);
			}
		} else if (S_ISSOCK(st.st_mode)) {
			continue; /* the control socket: privs_drop sets its group itself */
		} else if (fchownat(dirfd(d), de->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0) {
			log_warn(NULL, "cannot chown %s/%s: %s", path, de->d_name, strerror(errno));
		}
	}
	closedir(d);
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

void privs_drop(const struct conf *c, struct spool *sp, gid_t control_gid)
{
	if (geteuid() != 0 || c->user == NULL || c->user[0] == '\0')
		return;
	errno = 0;
	struct passwd *pw = getpwnam(c->user);
	if (pw == NULL)
		die_perm(EXIT_CONFIG, "user \"%s\": no such user", c->user);
	if (pw->pw_uid == 0)
		return;
	uid_t uid = pw->pw_uid;
	gid_t gid = pw->pw_gid;
	privs_chown_tree(sp->root_fd, sp->root, uid, gid, 0);
	/* The control socket keeps control_group (when set) but must belong to the user
	 * spoold becomes, or only root could use it. */
	if (fchownat(sp->fd[SD_RUN], "control", uid, control_gid != (gid_t)-1 ? control_gid : gid,
	             AT_SYMLINK_NOFOLLOW) < 0 &&
	    errno != ENOENT)
		log_warn(NULL, "cannot chown %s/run/control: %s", sp->root, strerror(errno));
	/* 0750: the spool holds other people's mail. With a control_group, its members must
	 * reach run/control, and nothing else: the root becomes 0711 (anyone may pass
	 * through, no one but the user may list it) and run/ 0710 with that group, while
	 * every state directory stays 0750 with the user's own group, so the group can use
	 * the socket without being able to read a single message. */
	int group_ok = control_gid != (gid_t)-1;
	if (fchmod(sp->root_fd, group_ok ? 0711 : 0750) < 0)
		log_warn(NULL, "cannot chmod %s: %s", sp->root, strerror(errno));
	if (group_ok &&
	    (fchown(sp->fd[SD_RUN], uid, control_gid) < 0 || fchmod(sp->fd[SD_RUN], 0710) < 0))
		log_warn(NULL, "cannot give %s/run to control_group: %s", sp->root,
		         strerror(errno));
	user_become(c->user, privs_metrics_gid(c));
	log_info(NULL, "running as user %s (uid %ld)", c->user, (long)uid);
}
