/*
 * control - see control.h.
 */
#include "control.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
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

int control_listen(const char *root, gid_t gid)
{
	struct sockaddr_un sa;
	if (control_addr(root, &sa) < 0)
		return -1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	/* We hold run/spoold.lock, so a socket file left here is a dead predecessor's. */
	if (unlink(sa.sun_path) < 0 && errno != ENOENT)
		goto fail;
	/* Bind with a tight umask so the socket is never reachable with looser permissions,
	 * not even between bind and chmod. */
	mode_t old = umask(0077);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
	umask(old);
	if (r < 0)
		goto fail;
	/* A socket's mode is 0777 less the umask: set the intended mode explicitly. */
	if (gid != (gid_t)-1) {
		if (chown(sa.sun_path, (uid_t)-1, gid) < 0 || chmod(sa.sun_path, 0660) < 0)
			goto fail;
	} else if (chmod(sa.sun_path, 0600) < 0) {
		goto fail;
	}
	if (listen(fd, 16) < 0)
		goto fail;
	return fd;
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
