/*
 * watch - see watch.h.
 *
 * libinotifytools keeps its inotify descriptor to itself and counts timeouts in whole
 * seconds. We find the descriptor once (the /proc/self/fd entry that is an inotify
 * instance), mark it close-on-exec so scanner children do not inherit it, and poll it
 * with millisecond timeouts; libinotifytools then reads the events without waiting.
 */
#include "watch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inotifytools/inotifytools.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log.h"

static int watch_fd = -1;

static int watch_find_fd(void)
{
	DIR *d = opendir("/proc/self/fd");
	int found = -1;
	if (d == NULL)
		return -1;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char path[300], target[64];
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/proc/self/fd/%s", de->d_name);
		ssize_t n = readlink(path, target, sizeof target - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		if (strcmp(target, "anon_inode:inotify") == 0)
			found = atoi(de->d_name);
	}
	closedir(d);
	return found;
}

void watch_open(const char *dir)
{
	if (!inotifytools_initialize())
		die_temp(NULL, "inotify: cannot initialise: %s", strerror(inotifytools_error()));
	/* A name counts once it is complete: moved in (the recommended drop), closed after
	 * writing (a plain cp), or created as something that is never written (a FIFO, a
	 * directory, a symlink) - the stage decides what to do with each. */
	if (!inotifytools_watch_file(dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE))
		die_temp(NULL, "inotify: cannot watch %s: %s", dir, strerror(inotifytools_error()));
	watch_fd = watch_find_fd();
	if (watch_fd >= 0) {
		int fl = fcntl(watch_fd, F_GETFD);
		if (fl < 0 || fcntl(watch_fd, F_SETFD, fl | FD_CLOEXEC) < 0)
			die_temp(NULL, "inotify: fcntl: %s", strerror(errno));
	} else {
		log_warn(NULL, "inotify: descriptor not found; waits fall back to whole seconds");
	}
}

enum watch_event watch_next(int timeout_ms, char *name, size_t len)
{
	struct inotify_event *ev = NULL;
	if (watch_fd >= 0) {
		/* libinotifytools reads many events at once and hands them out one by one: take
		 * a buffered one first, and wait on the descriptor only when there is none. */
		ev = inotifytools_next_event(0);
		if (ev == NULL && inotifytools_error() == 0) {
			struct pollfd pfd = {.fd = watch_fd, .events = POLLIN};
			int r = poll(&pfd, 1, timeout_ms < 0 ? -1 : timeout_ms);
			if (r < 0)
				return errno == EINTR ? WATCH_INTR : WATCH_RESCAN;
			if (r == 0)
				return WATCH_TIMEOUT;
			ev = inotifytools_next_event(0);
		}
	} else {
		/* libinotifytools counts whole seconds; 0 means do not wait. */
		ev = inotifytools_next_event(timeout_ms <= 0 ? 0 : (timeout_ms + 999) / 1000);
	}
	if (ev == NULL) {
		int err = inotifytools_error();
		if (err == EINTR)
			return WATCH_INTR;
		if (err != 0)
			log_warn(NULL, "inotify: %s; rescanning", strerror(err));
		return err ? WATCH_RESCAN : WATCH_TIMEOUT;
	}
	if (ev->mask & IN_Q_OVERFLOW)
		return WATCH_RESCAN;
	if (ev->len == 0 || ev->name[0] == '\0')
		return WATCH_RESCAN;
	snprintf(name, len, "%s", ev->name);
	return WATCH_NAME;
}
