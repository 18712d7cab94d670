/*
 * watch - see watch.h.
 *
 * libinotifytools keeps its inotify descriptor to itself: we find it once (the
 * /proc/self/fd entry that is an inotify instance) only to mark it close-on-exec, so
 * scanner children do not inherit it.
 */
#include "watch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inotifytools/inotifytools.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

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
	}
}

enum watch_event watch_next(int timeout_ms, char *name, size_t len)
{
	/* libinotifytools only waits in whole seconds (and 0 means forever), so the wait is
	 * bounded by an interval timer whose signal interrupts it. The timer repeats every
	 * 10 ms, so a signal that lands just before the library starts waiting is followed
	 * by another. A buffered event is returned at once, without waiting. */
	if (timeout_ms >= 0)
		alarm_interval_arm(timeout_ms, 10);
	struct inotify_event *ev = inotifytools_next_event(-1);
	int err = ev ? 0 : inotifytools_error();
	if (timeout_ms >= 0)
		alarm_interval_disarm();
	if (ev == NULL) {
		if (err == EINTR || err == 0)
			return alarm_fired() ? WATCH_TIMEOUT : WATCH_INTR;
		log_warn(NULL, "inotify: %s; rescanning", strerror(err));
		return WATCH_RESCAN;
	}
	if (ev->mask & IN_Q_OVERFLOW)
		return WATCH_RESCAN;
	if (ev->len == 0 || ev->name[0] == '\0')
		return WATCH_RESCAN;
	snprintf(name, len, "%s", ev->name);
	return WATCH_NAME;
}
