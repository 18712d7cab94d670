/*
 * watch - see watch.h.
 *
 * libinotifytools keeps its inotify descriptor to itself: we find it once (the
 * /proc/self/fd entry that is an inotify instance) to mark it close-on-exec, so scanner
 * children do not inherit it, and non-blocking, to read the events from it (watch.h).
 */
#include "watch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inotifytools/inotifytools.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Names waiting for the stage. Past the bound the queue is dropped and the stage rescans:
 * a flood of names costs one directory scan, never unbounded memory. */
#define WATCH_QUEUE_MAX 512
#define WATCH_NAME_MAX  256

static struct {
	pthread_mutex_t mu;
	char names[WATCH_QUEUE_MAX][WATCH_NAME_MAX];
	size_t head, count;
	int lost;  /* names were dropped (overflow, an unnamed event): rescan */
	int error; /* the last inotify read error, for the stage's log */
	int efd;
	int ifd;    /* libinotifytools' descriptor, -1 if not found */
	int stopfd; /* watch_close asks the thread to end */
} watch_q = {.mu = PTHREAD_MUTEX_INITIALIZER, .efd = -1, .ifd = -1, .stopfd = -1};

static pthread_t watch_tid;
static int watch_started;

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

/* Queue one event (name NULL: names were lost) and wake the stage. */
static void watch_queue_put(const char *name, int err)
{
	pthread_mutex_lock(&watch_q.mu);
	if (name == NULL || strlen(name) >= WATCH_NAME_MAX || watch_q.count == WATCH_QUEUE_MAX) {
		watch_q.lost = 1;
		if (err)
			watch_q.error = err;
	} else {
		size_t tail = (watch_q.head + watch_q.count) % WATCH_QUEUE_MAX;
		memcpy(watch_q.names[tail], name, strlen(name) + 1);
		watch_q.count++;
	}
	pthread_mutex_unlock(&watch_q.mu);
	uint64_t one = 1;
	/* EAGAIN only when the counter is near overflow: it is readable then anyway. */
	if (write(watch_q.efd, &one, sizeof one) < 0 && errno != EAGAIN)
		abort(); /* the eventfd is ours and open: anything else is a bug */
}

/* Queue what the inotify descriptor has now. It is read here, not through
 * inotifytools_next_event: that call blocks in select() with no time limit whenever its
 * timeout is 0 or less and its buffer is empty, and a watcher thread stuck there never
 * sees watch_close (every stop then waited for spoold's SIGKILL). The descriptor is
 * non-blocking, so this returns as soon as it is empty. */
static void watch_drain_fd(void)
{
	static char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		ssize_t n = read(watch_q.ifd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			watch_queue_put(NULL, n < 0 ? errno : EIO);
			/* A persistent error must not spin: the stage rescans this often. */
			struct timespec pause = {1, 0};
			nanosleep(&pause, NULL);
			return;
		}
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			if ((ev->mask & IN_Q_OVERFLOW) || ev->len == 0 || ev->name[0] == '\0')
				watch_queue_put(NULL, 0);
			else
				watch_queue_put(ev->name, 0);
			p += sizeof *ev + ev->len;
		}
	}
}

/* Without the descriptor (not found in /proc): libinotifytools with a one-second limit,
 * so the thread still looks at watch_close at least once a second. */
static void watch_drain_lib(void)
{
	struct inotify_event *ev = inotifytools_next_event(1);
	if (ev == NULL) {
		int err = inotifytools_error();
		if (err != 0 && err != EINTR && err != EAGAIN) {
			watch_queue_put(NULL, err);
			struct timespec pause = {1, 0};
			nanosleep(&pause, NULL);
		}
		return;
	}
	if ((ev->mask & IN_Q_OVERFLOW) || ev->len == 0 || ev->name[0] == '\0')
		watch_queue_put(NULL, 0);
	else
		watch_queue_put(ev->name, 0);
}

/* Waits for inotify and for watch_close: joined, never cancelled, so that a stopping
 * stage exits with no thread of its own still running (and ASan's LeakSanitizer can
 * suspend everything it must look at). Without libinotifytools' descriptor it looks
 * once a second. */
static void *watch_thread(void *arg)
{
	(void)arg;
	for (;;) {
		struct pollfd p[2] = {{.fd = watch_q.stopfd, .events = POLLIN},
		                      {.fd = watch_q.ifd, .events = POLLIN}};
		int r = poll(p, watch_q.ifd >= 0 ? 2 : 1, watch_q.ifd >= 0 ? -1 : 1000);
		if (r < 0 && errno != EINTR) {
			watch_queue_put(NULL, errno);
			struct timespec pause = {1, 0};
			nanosleep(&pause, NULL);
			continue;
		}
		if (p[0].revents & POLLIN)
			return NULL;
		if (watch_q.ifd < 0)
			watch_drain_lib();
		else if (r > 0 && p[1].revents)
			watch_drain_fd();
	}
}

int watch_open(const char *dir)
{
	if (!inotifytools_initialize())
		die_temp(NULL, "inotify: cannot initialise: %s", strerror(inotifytools_error()));
	/* A name counts once it is complete: moved in (the recommended drop), closed after
	 * writing (a plain cp), or created as something that is never written (a FIFO, a
	 * directory, a symlink) - the stage decides what to do with each. */
	if (!inotifytools_watch_file(dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE))
		die_temp(NULL, "inotify: cannot watch %s: %s", dir, strerror(inotifytools_error()));
	int ifd = watch_find_fd();
	watch_q.ifd = ifd;
	if (ifd >= 0) {
		int fl = fcntl(ifd, F_GETFD);
		if (fl < 0 || fcntl(ifd, F_SETFD, fl | FD_CLOEXEC) < 0)
			die_temp(NULL, "inotify: fcntl: %s", strerror(errno));
		/* Non-blocking: watch_drain_fd reads until it is empty. */
		fl = fcntl(ifd, F_GETFL);
		if (fl < 0 || fcntl(ifd, F_SETFL, fl | O_NONBLOCK) < 0)
			die_temp(NULL, "inotify: fcntl: %s", strerror(errno));
	}
	watch_q.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	watch_q.stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (watch_q.efd < 0 || watch_q.stopfd < 0)
		die_temp(NULL, "eventfd: %s", strerror(errno));
	/* The thread starts with every signal blocked (watch.h: signals are the stage's). */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int e = pthread_create(&watch_tid, NULL, watch_thread, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (e != 0)
		die_temp(NULL, "inotify: cannot start the watcher thread: %s", strerror(e));
	watch_started = 1;
	return watch_q.efd;
}

void watch_close(void)
{
	if (!watch_started)
		return;
	uint64_t one = 1;
	if (write(watch_q.stopfd, &one, sizeof one) < 0)
		log_panic("watch_close: eventfd write: %s", strerror(errno));
	pthread_join(watch_tid, NULL);
	watch_started = 0;
}

enum watch_event watch_take(char *name, size_t len)
{
	uint64_t n;
	if (read(watch_q.efd, &n, sizeof n) < 0 && errno != EAGAIN)
		log_panic("eventfd read: %s", strerror(errno));
	enum watch_event r = WATCH_NONE;
	int err = 0;
	pthread_mutex_lock(&watch_q.mu);
	if (watch_q.lost) {
		err = watch_q.error;
		watch_q.lost = 0;
		watch_q.error = 0;
		watch_q.head = watch_q.count = 0;
		r = WATCH_RESCAN;
	} else if (watch_q.count) {
		snprintf(name, len, "%s", watch_q.names[watch_q.head]);
		watch_q.head = (watch_q.head + 1) % WATCH_QUEUE_MAX;
		watch_q.count--;
		r = WATCH_NAME;
	}
	pthread_mutex_unlock(&watch_q.mu);
	if (err)
		log_warn(NULL, "inotify: %s; rescanning", strerror(err));
	return r;
}
