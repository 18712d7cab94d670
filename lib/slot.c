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

static int slot_open(struct spool *sp, const char *scanner, int n)
{
	char name[128];
	if (bsnprintf(name, sizeof name, "%s.%d", scanner, n) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return openat(sp->fd[SD_SLOTS], name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
}

int slot_acquire(struct spool *sp, const char *scanner, int max)
{
	static unsigned rr;
	if (max < 1)
		max = 1;
	/* First look for a free slot without waiting. */
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
	/* All taken: sleep in the kernel on one slot (rotating which, with the pid mixed in,
	 * so waiting runners spread over the slots), burning no CPU while we wait. */
	int n = (int)((rr++ + (unsigned)getpid()) % (unsigned)max);
	int fd = slot_open(sp, scanner, n);
	if (fd < 0)
		return -1;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int e = errno;
			close(fd);
			errno = e;
			return -1;
		}
	}
	return fd;
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
