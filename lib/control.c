/*
 * control - see control.h.
 */
#include "control.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int control_addr(const char *root, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if (bsnprintf(sa->sun_path, sizeof sa->sun_path, "%s/run/" CONTROL_NAME, root) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

/* A private directory in run/: a random name made with mkdirat (never an existing one), then
 * opened without following a symlink and checked to be ours, empty and 0700. The spool's
 * owner can write run/ and can rename or replace the name meanwhile, but cannot make a
 * directory that belongs to us (root, at start): whatever passes the check is one that
 * only we can write into. Returns its fd and its name in name[]. */
static int control_privdir(int run_fd, char *name, size_t nlen)
{
	for (int tries = 0; tries < 16; tries++) {
		unsigned char rnd[8];
		if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
			return -1;
		if (bsnprintf(name, nlen, ".ctl.%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1],
		              rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]) < 0) {
			errno = ENAMETOOLONG;
			return -1;
		}
		if (mkdirat(run_fd, name, 0700) < 0) {
			if (errno == EEXIST)
				continue;
			return -1;
		}
		int dfd = openat(run_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		struct stat st;
		/* A separated spool's run/ is set-group-ID (3770), which a new directory
		 * inherits: clear it (we made the directory, so the chmod is ours to do) before
		 * the mode is checked, or every start after the first would find 2700 here. */
		int ours = dfd >= 0 && fstat(dfd, &st) == 0 && S_ISDIR(st.st_mode) &&
		           st.st_uid == geteuid() && st.st_nlink == 2;
		if (ours && fchmod(dfd, 0700) == 0 && fstat(dfd, &st) == 0 &&
		    (st.st_mode & 07777) == 0700)
			return dfd;
		if (dfd >= 0)
			close(dfd);
		/* Swapped under us: not ours to use, nor to remove. */
		errno = EPERM;
		return -1;
	}
	errno = EEXIST;
	return -1;
}

/* Private directories a predecessor left when it died between mkdir and rmdir. Only ones
 * that are ours and 0700 are emptied: nobody else can have put anything in them. */
static void control_privdir_sweep(int run_fd)
{
	int fd = openat(run_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (d == NULL) {
		if (fd >= 0)
			close(fd);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, ".ctl.", 5) != 0)
			continue;
		int dfd =
		    openat(run_fd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		struct stat st;
		if (dfd < 0)
			continue;
		if (fstat(dfd, &st) == 0 && st.st_uid == geteuid() &&
		    (st.st_mode & 07777) == 0700) {
			unlinkat(dfd, CONTROL_NAME, 0);
			unlinkat(run_fd, de->d_name, AT_REMOVEDIR);
		}
		close(dfd);
	}
	closedir(d);
}

/* bind(2) takes a path: resolve it from a working directory set to the private directory,
 * so that no component the spool's owner controls is looked up. Single-threaded start-up
 * only (the working directory is process-wide); it is restored before returning. */
static int control_bind_in(int fd, int dfd, mode_t mode)
{
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, CONTROL_NAME, sizeof CONTROL_NAME);
	int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (cwd < 0)
		return -1;
	int r = -1;
	if (fchdir(dfd) == 0) {
		/* Created with its final mode: never reachable with looser permissions. */
		mode_t old = umask(~mode & 0777);
		r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
		umask(old);
	}
	int err = errno;
	if (fchdir(cwd) < 0 && r == 0) {
		err = errno;
		r = -1;
	}
	close(cwd);
	errno = err;
	return r;
}

int control_listen(int run_fd, uid_t owner, gid_t gid, mode_t mode)
{
	char priv[64];
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	control_privdir_sweep(run_fd);
	int dfd = control_privdir(run_fd, priv, sizeof priv);
	if (dfd < 0)
		goto fail;
	if (control_bind_in(fd, dfd, mode) < 0)
		goto fail_dir;
	/* Owner, group and mode go on the socket file before listen, so no client ever sees
	 * it half set up. fchmod/fchown on the socket descriptor would change the sockfs
	 * inode, not this file (Linux): they are set by name, inside the directory only we
	 * can write, so the name is the socket we bound and never a planted symlink. */
	if ((owner != (uid_t)-1 || gid != (gid_t)-1) &&
	    fchownat(dfd, CONTROL_NAME, owner, gid, AT_SYMLINK_NOFOLLOW) < 0)
		goto fail_sock;
	if (fchmodat(dfd, CONTROL_NAME, mode, 0) < 0)
		goto fail_sock;
	if (listen(fd, 16) < 0)
		goto fail_sock;
	/* Publish it as run/control with one rename: it replaces whatever is there (a dead
	 * predecessor's socket; anything the spool's owner planted, a symlink included)
	 * without following it. We hold run/spoold.lock, so no live spoold uses that name. */
	if (renameat(dfd, CONTROL_NAME, run_fd, CONTROL_NAME) < 0) {
		if (errno != EISDIR && errno != ENOTEMPTY && errno != EEXIST)
			goto fail_sock;
		/* A directory in the way: an empty one goes; a full one is an error. */
		if (unlinkat(run_fd, CONTROL_NAME, AT_REMOVEDIR) < 0 ||
		    renameat(dfd, CONTROL_NAME, run_fd, CONTROL_NAME) < 0)
			goto fail_sock;
	}
	unlinkat(run_fd, priv, AT_REMOVEDIR);
	close(dfd);
	return fd;
fail_sock:;
	int e1 = errno;
	unlinkat(dfd, CONTROL_NAME, 0);
	errno = e1;
fail_dir:;
	int e2 = errno;
	close(dfd);
	unlinkat(run_fd, priv, AT_REMOVEDIR);
	errno = e2;
fail:;
	int err = errno;
	close(fd);
	errno = err;
	return -1;
}

int control_request(const char *root, const char *cmd, const char *stage, struct buf *reply,
                    int timeout_ms)
{
	struct sockaddr_un sa;
	char line[CONTROL_LINE_MAX];
	if (control_addr(root, &sa) < 0)
		return -1;
	if (bsnprintf(line, sizeof line, "%s %s\n", cmd, stage) < 0) {
		errno = E2BIG;
		return -1;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    write_all(fd, line, strlen(line)) < 0)
		goto fail;
	buf_reset(reply);
	int64_t deadline = now_ms_monotonic() + timeout_ms;
	for (;;) {
		int64_t left = deadline - now_ms_monotonic();
		if (left <= 0) {
			errno = ETIMEDOUT;
			goto fail;
		}
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int pr = poll(&p, 1, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0)
			goto fail;
		if (pr == 0)
			continue;
		char tmp[256];
		ssize_t n = read(fd, tmp, sizeof tmp);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto fail;
		if (n == 0)
			break;
		buf_add(reply, tmp, (size_t)n);
		if (reply->len > 4096 || memchr(tmp, '\n', (size_t)n))
			break;
	}
	buf_cstr(reply);
	char *nl = reply->data ? strchr(reply->data, '\n') : NULL;
	if (nl) {
		*nl = '\0';
		reply->len = (size_t)(nl - reply->data);
	}
	close(fd);
	return 0;
fail:;
	int err = errno;
	close(fd);
	errno = err;
	return -1;
}
