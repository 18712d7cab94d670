/*
 * slot - see slot.h.
 */
#include "slot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>

#include "spool.h"
#include "util.h"

/* A slot file is only ever flock'd, never written: read-only is enough, and is all a
 * runner gets on one that spoold (another user, in a separated spool) made first. */
static int slot_file_open(struct spool *sp, const char *name)
{
	int fd = openat(sp->fd[SD_SLOTS], name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0660);
	if (fd < 0 && errno == EACCES)
		fd = openat(sp->fd[SD_SLOTS], name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	return fd;
}

static int slot_open(struct spool *sp, const char *scanner, int n)
{
	char name[128];
	if (bsnprintf(name, sizeof name, "%s.%d", scanner, n) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return slot_file_open(sp, name);
}

/* Try every slot without waiting; the locked descriptor, or -1 (errno EWOULDBLOCK when
 * all are busy). */
static int slot_try_all(struct spool *sp, const char *scanner, int max)
{
	for (int i = 0; i < max; i++) {
		int fd = slot_open(sp, scanner, i);
		if (fd < 0)
			return -1;
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return fd;
		int e = errno;
		close(fd);
		if (e != EWOULDBLOCK) {
			errno = e;
			return -1;
		}
	}
	errno = EWOULDBLOCK;
	return -1;
}

/* flock(fd, LOCK_EX), woken every 100 ms by a timer to look at the clock: 0 when locked,
 * -1 with errno (EINTR when woken: look again; ETIMEDOUT past deadline). */
static int slot_lock_until(int fd, int64_t deadline)
{
	if (deadline >= 0 && now_ms_monotonic() >= deadline) {
		errno = ETIMEDOUT;
		return -1;
	}
	alarm_interval_arm(100, 100);
	int r = flock(fd, LOCK_EX);
	int e = errno;
	alarm_interval_disarm();
	errno = e;
	return r;
}

int slot_acquire_timed(struct spool *sp, const char *scanner, int max, int timeout_ms)
{
	if (max < 1)
		max = 1;
	int fd = slot_try_all(sp, scanner, max);
	if (fd >= 0 || errno != EWOULDBLOCK)
		return fd;
	/* All taken. Waiters line up on slots/<scanner>.wait, sleeping in flock; the one at
	 * the head sleeps on one slot at a time for at most 100 ms (a timer interrupts the
	 * wait), then looks at all of them again. So a waiter takes whichever slot frees
	 * first, within 100 ms, at a cost of ten wake-ups a second and no busy loop. Every
	 * wait ends at the deadline: a slot held forever (a hung scanner, anyone else who
	 * locked the file) must become an error verdict, never a stalled runner. */
	int64_t deadline = timeout_ms > 0 ? now_ms_monotonic() + timeout_ms : -1;
	char wname[128];
	if (bsnprintf(wname, sizeof wname, "%s.wait", scanner) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int wfd = slot_file_open(sp, wname);
	if (wfd < 0)
		return -1;
	while (slot_lock_until(wfd, deadline) < 0) {
		if (errno != EINTR) {
			int e = errno;
			close(wfd);
			errno = e;
			return -1;
		}
	}
	for (int n = 0;; n = (n + 1) % max) {
		fd = slot_try_all(sp, scanner, max);
		if (fd >= 0 || errno != EWOULDBLOCK)
			break;
		fd = slot_open(sp, scanner, n);
		if (fd < 0)
			break;
		int r = slot_lock_until(fd, deadline);
		int e = errno;
		if (r == 0)
			break;
		close(fd);
		fd = -1;
		if (e != EINTR) {
			errno = e;
			break;
		}
	}
	int e = errno;
	close(wfd); /* the next waiter moves to the head of the line */
	errno = e;
	return fd;
}

int slot_acquire(struct spool *sp, const char *scanner, int max)
{
	return slot_acquire_timed(sp, scanner, max, SLOT_WAIT_DEFAULT_MS);
}

void slot_release(int fd)
{
	if (fd >= 0)
		close(fd);
}

int slot_count_busy(struct spool *sp, const char *scanner, int max)
{
	int busy = 0;
	for (int i = 0; i < max; i++) {
		int fd = slot_open(sp, scanner, i);
		if (fd < 0)
			continue;
		if (flock(fd, LOCK_EX | LOCK_NB) < 0)
			busy++;
		close(fd);
	}
	return busy;
}
