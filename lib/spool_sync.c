/*
 * spool_sync - the two ways spool_entry_sync makes a step durable (spool.h,
 * docs/INTERNALS.md "Durability"): one syncfs(2) of the spool's filesystem, or an
 * fdatasync of every file of the entries this process is committing plus an fsync of their
 * directories ("files"). Kept apart from spool.c, which holds the state machine.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"

/* The configured strategy (spool_sync in the config, applied by conf_load before any
 * spool_open); spool_open copies it into struct spool. */
static enum spool_sync_mode spool_sync_configured = SPOOL_SYNC_AUTO;

void spool_sync_mode_set(enum spool_sync_mode m)
{
	spool_sync_configured = m;
}

enum spool_sync_mode spool_sync_mode_get(void)
{
	return spool_sync_configured;
}

/* "auto": above this much dirty or in-flight page cache (the whole machine's, the only
 * figure the kernel gives without debugfs) a syncfs would write other writers' data first,
 * so the files are synced one by one instead. Chosen by bench/foreign.py (docs/
 * INTERNALS.md, "Sync strategy"): per file costs a disk flush per file (tens of ms a step),
 * so syncfs stays faster while the disk keeps up with the other writer (an 80 MiB/s writer
 * leaves a few MB between two syncs); a writer that outruns the disk piles up hundreds of
 * MB, which a syncfs then waits for (p90 3.3 s), and only then is per file the cheaper. */
#define SPOOL_SYNC_AUTO_DIRTY_KB (64 * 1024)

/* Dirty + Writeback of /proc/meminfo in kB, or -1 when it cannot be read. */
static long spool_sync_dirty_kb(void)
{
	int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	char b[4096];
	ssize_t n = read(fd, b, sizeof b - 1);
	close(fd);
	if (n <= 0)
		return -1;
	b[n] = '\0';
	long total = 0;
	int found = 0;
	static const char *const keys[] = {"\nDirty:", "\nWriteback:"};
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		const char *p = strstr(b, keys[i]);
		if (p == NULL)
			continue;
		total += strtol(p + strlen(keys[i]), NULL, 10);
		found++;
	}
	return found ? total : -1;
}

int spool_sync_uses_files(const struct spool *sp)
{
	if (sp->sync_mode != SPOOL_SYNC_AUTO)
		return sp->sync_mode == SPOOL_SYNC_FILES;
	/* Unreadable meminfo: files, which is correct whatever else writes. */
	long kb = spool_sync_dirty_kb();
	return kb < 0 || kb > SPOOL_SYNC_AUTO_DIRTY_KB;
}

/* Entries this process wrote into (spool_entry_write) since their last sync: the rest of a
 * group commit. The scanner-runner writes the verdicts of a whole batch and then calls
 * spool_entry_sync on one entry, which must cover all of them, as one syncfs does. Keyed
 * by descriptor and checked by inode, so a descriptor closed and reused for something else
 * is never synced in its place. Full: the sync falls back to syncfs. */
#define SPOOL_SYNC_PENDING 128
static struct spool_sync_pending {
	int fd;
	enum spool_dir where;
	dev_t dev;
	ino_t ino;
} spool_sync_pending[SPOOL_SYNC_PENDING];
static size_t spool_sync_npending;
static int spool_sync_overflow;

void spool_sync_note(const struct spool_entry *e)
{
	struct stat st;
	for (size_t i = 0; i < spool_sync_npending; i++)
		if (spool_sync_pending[i].fd == e->fd) {
			spool_sync_pending[i].where = e->where;
			return;
		}
	if (spool_sync_npending == SPOOL_SYNC_PENDING || fstat(e->fd, &st) < 0) {
		spool_sync_overflow = 1; /* cannot track it: the next sync is a syncfs */
		return;
	}
	spool_sync_pending[spool_sync_npending++] = (struct spool_sync_pending){
	    .fd = e->fd, .where = e->where, .dev = st.st_dev, .ino = st.st_ino};
}

void spool_sync_forget(int fd)
{
	for (size_t i = 0; i < spool_sync_npending; i++)
		if (spool_sync_pending[i].fd == fd) {
			spool_sync_pending[i] = spool_sync_pending[--spool_sync_npending];
			return;
		}
}

/* fdatasync every regular file below dirfd and fsync every directory, dirfd last (its
 * names after the files they name). depth bounds the walk: an entry has at most one level
 * of subdirectories (out.<conn>/, derived/, derived.tmp/). A name this user may not open
 * was written by another stage, which synced it before its hand-off: skipped. */
static int spool_sync_tree(int dirfd, int depth)
{
	int dfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -1;
	DIR *d = fdopendir(dfd);
	if (d == NULL) {
		int err = errno;
		close(dfd);
		errno = err;
		return -1;
	}
	struct dirent *de;
	int r = 0;
	while (r == 0 && (errno = 0, de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			r = errno == ENOENT ? 0 : -1; /* removed meanwhile: nothing to sync */
			continue;
		}
		if (!S_ISREG(st.st_mode) && !(S_ISDIR(st.st_mode) && depth > 0))
			continue; /* a symlink or FIFO is never part of a commit */
		int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
		int fd =
		    openat(dirfd, de->d_name, S_ISDIR(st.st_mode) ? flags | O_DIRECTORY : flags);
		if (fd < 0) {
			r = errno == ENOENT || errno == EACCES ? 0 : -1;
			continue;
		}
		/* fdatasync: the data and what is needed to read it back (size, blocks); a
		 * new file's name is the directory's, synced below. */
		if (S_ISDIR(st.st_mode))
			r = spool_sync_tree(fd, depth - 1);
		else if (fdatasync(fd) < 0)
			r = -1;
		int err = errno;
		close(fd);
		errno = err;
	}
	if (r == 0 && errno != 0 && de == NULL)
		r = -1; /* readdir failed */
	int err = errno;
	closedir(d);
	if (r < 0) {
		errno = err;
		return -1;
	}
	return fsync_dir(dirfd);
}

/* The directory that renamed an entry into state `where` without an fsync of its own (a
 * claim from inbound/, a hand-off), where renames are not journaled as one transaction:
 * its fsync is the other half of making that rename durable (spool_dirs_sync). */
static int spool_sync_source_of(enum spool_dir where)
{
	switch (where) {
	case SD_INCOMING:
		return SD_INBOUND; /* spool_inbound_claim */
	case SD_SCAN:
		return SD_INCOMING; /* the splitter's hand-off */
	case SD_ROUTE:
		return SD_SCAN; /* the scanner-runner's hand-off */
	default:
		return -1;
	}
}

/* Sync one entry's tree and the parents its hand-off touched (once per sync: *done). */
static int spool_sync_one(struct spool *sp, int fd, enum spool_dir where, unsigned *done)
{
	if (spool_sync_tree(fd, 1) < 0)
		return -1;
	/* The entry's own name in its state directory: the rename that brought it here. */
	int dirs[2] = {where, sp->rename_journaled ? -1 : spool_sync_source_of(where)};
	for (int i = 0; i < 2; i++) {
		if (dirs[i] < 0 || (*done & (1u << dirs[i])) || sp->fd[dirs[i]] < 0)
			continue;
		if (fsync_dir(sp->fd[dirs[i]]) < 0)
			return -1;
		*done |= 1u << dirs[i];
	}
	return 0;
}

int spool_sync_group(struct spool_entry *e)
{
	struct spool *sp = e->sp;
	if (!spool_sync_uses_files(sp) || spool_sync_overflow) {
		/* One syncfs covers every entry of the group (and, for an overflow, the entry
		 * that could not be tracked). */
		if (syncfs(e->fd) < 0)
			return -1;
		spool_sync_overflow = 0;
		spool_sync_npending = 0;
		return 0;
	}
	unsigned done = 0;
	if (spool_sync_one(sp, e->fd, e->where, &done) < 0)
		return -1;
	/* The rest of the group commit: every other entry written since its last sync. */
	for (size_t i = 0; i < spool_sync_npending; i++) {
		struct spool_sync_pending *p = &spool_sync_pending[i];
		struct stat st;
		if (p->fd == e->fd)
			continue;
		if (fstat(p->fd, &st) < 0 || st.st_dev != p->dev || st.st_ino != p->ino)
			continue; /* closed and reused: no longer an entry of ours */
		if (spool_sync_one(sp, p->fd, p->where, &done) < 0)
			return -1;
	}
	spool_sync_npending = 0;
	return 0;
}
