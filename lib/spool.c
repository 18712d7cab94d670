/*
 * spool - see spool.h and docs/INTERNALS.md.
 */
#include "spool.h"
#include "entry_names.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "crash.h"
#include "export.h"
#include "log.h"
#include "trace.h"
#include "util.h"

static const char *spool_dir_names[SD__COUNT] = {
    "inbound", "incoming", "scan", "route", "outbox", "quarantine",
    "hold",    "badmail",  "tmp",  "trash", "slots",  "run",
};

const char *spool_dir_name(enum spool_dir d)
{
	return spool_dir_names[d];
}

void spool_open(struct spool *sp, const char *root, int create)
{
	struct stat rst, st;
	sp->root = xstrdup(root);
	if (create && mkdir(root, 0750) < 0 && errno != EEXIST)
		die_temp(NULL, "cannot create spool %s: %s", root, strerror(errno));
	sp->root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->root_fd < 0)
		die_temp(NULL, "cannot open spool %s: %s", root, strerror(errno));
	if (fstat(sp->root_fd, &rst) < 0)
		die_temp(NULL, "cannot stat spool %s: %s", root, strerror(errno));
	for (int i = 0; i < SD__COUNT; i++) {
		const char *n = spool_dir_names[i];
		if (create && mkdirat(sp->root_fd, n, 0750) < 0 && errno != EEXIST)
			die_temp(NULL, "cannot create %s/%s: %s", root, n, strerror(errno));
		sp->fd[i] = openat(sp->root_fd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		/* In a separated spool outbox/ is the connectors' group's only (docs/SECURITY.md):
		 * the splitter and the scanner-runner cannot open it, and need not. fd -1 then:
		 * anything that uses it fails with EBADF, loudly. */
		if (sp->fd[i] < 0 && i == SD_OUTBOX && errno == EACCES)
			continue;
		if (sp->fd[i] < 0)
			die_temp(NULL, "cannot open %s/%s: %s", root, n, strerror(errno));
		if (fstat(sp->fd[i], &st) < 0)
			die_temp(NULL, "cannot stat %s/%s: %s", root, n, strerror(errno));
		/* rename(2) is atomic only within one filesystem: a mount point inside the spool
		 * would turn every hand-off into EXDEV. */
		if (st.st_dev != rst.st_dev)
			die_perm(
			    EXIT_CONFIG,
			    "%s/%s is on another filesystem than %s: every spool directory must "
			    "be on one filesystem",
			    root, n, root);
	}
	if (create && fsync_dir(sp->root_fd) < 0)
		die_temp(NULL, "cannot fsync %s: %s", root, strerror(errno));
	sp->rename_journaled = spool_fs_journaled(sp->root_fd, &rst);
	sp->sync_mode = spool_sync_mode_get();
}

/* Is there a jbd2 journal for the block device dev? ext4 names it "<device>-<inode>"
 * under /proc/fs/jbd2 (for example "vda-8" or "dm-0-8"); the device's name is the
 * last component of its /sys/dev/block/MAJ:MIN link. Anything unreadable says no. */
static int spool_ext4_journaled(dev_t dev)
{
	char link[64], target[PATH_MAX], prefix[NAME_MAX + 2];
	snprintf(link, sizeof link, "/sys/dev/block/%u:%u", major(dev), minor(dev));
	ssize_t n = readlink(link, target, sizeof target - 1);
	if (n <= 0)
		return 0;
	target[n] = '\0';
	const char *name = strrchr(target, '/');
	name = name ? name + 1 : target;
	if (bsnprintf(prefix, sizeof prefix, "%s-", name) < 0)
		return 0;
	DIR *d = opendir("/proc/fs/jbd2");
	if (d == NULL)
		return 0;
	int found = 0;
	struct dirent *de;
	while (!found && (de = readdir(d)) != NULL)
		found = strncmp(de->d_name, prefix, strlen(prefix)) == 0;
	closedir(d);
	return found;
}

int spool_fs_journaled(int fd, const struct stat *st)
{
	struct statfs fs;
	if (fstatfs(fd, &fs) < 0)
		return 0;
	switch ((unsigned long)fs.f_type) {
	case 0xEF53UL: /* ext2/3/4: only with a journal; ext4 can run without one */
		return spool_ext4_journaled(st->st_dev);
	case 0x58465342UL: /* XFS: always journaled */
	case 0x9123683EUL: /* btrfs */
	case 0x01021994UL: /* tmpfs: nothing survives a crash anyway */
		return 1;
	default:
		return 0;
	}
}

void spool_close(struct spool *sp)
{
	for (int i = 0; i < SD__COUNT; i++)
		if (sp->fd[i] >= 0)
			close(sp->fd[i]);
	if (sp->root_fd >= 0)
		close(sp->root_fd);
	free(sp->root);
	sp->root = NULL;
}

static int spool_conn_valid(const char *conn)
{
	size_t n = 0;
	for (const char *p = conn; *p; p++, n++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return 0;
	}
	return n > 0 && n <= 64;
}

int spool_outbox_open(struct spool *sp, const char *conn)
{
	if (!spool_conn_valid(conn)) {
		errno = EINVAL;
		return -1;
	}
	int fd = openat(sp->fd[SD_OUTBOX], conn, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0 || errno != ENOENT)
		return fd;
	if (mkdirat(sp->fd[SD_OUTBOX], conn, 0770) < 0 && errno != EEXIST)
		return -1;
	/* The new outbox name must survive a crash before anything is renamed into it. */
	if (fsync_dir(sp->fd[SD_OUTBOX]) < 0)
		return -1;
	return openat(sp->fd[SD_OUTBOX], conn, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

void spool_qid_new(char out[SPOOL_QID_LEN + 1])
{
	static unsigned counter;
	static int64_t last_us;
	int64_t us = now_us_wall();
	/* Never hand out a time earlier than the last one from this process, so IDs from one
	 * process stay ordered even if the clock steps back. */
	if (us <= last_us)
		us = last_us + 1;
	last_us = us;
	snprintf(out, SPOOL_QID_LEN + 1, "%014llx-%06lx-%04x", (unsigned long long)us,
	         (unsigned long)getpid() & 0xffffffUL, counter++ & 0xffffu);
}

int spool_qid_valid(const char *s)
{
	static const char shape[] = "TTTTTTTTTTTTTT-PPPPPP-CCCC";
	if (strlen(s) != SPOOL_QID_LEN)
		return 0;
	for (size_t i = 0; i < SPOOL_QID_LEN; i++) {
		char c = s[i];
		if (shape[i] == '-') {
			if (c != '-')
				return 0;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return 0;
		}
	}
	return 1;
}

static int spool_name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int spool_list(int dirfd, int want_qids, char ***names, size_t *n)
{
	*names = NULL;
	*n = 0;
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	DIR *d = fdopendir(fd);
	if (d == NULL) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	size_t cap = 0;
	struct dirent *de;
	errno = 0;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (want_qids && !spool_qid_valid(de->d_name))
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 64;
			*names = xrealloc(*names, cap * sizeof(char *));
		}
		(*names)[(*n)++] = xstrdup(de->d_name);
	}
	int e = errno;
	closedir(d);
	if (e) {
		spool_names_free(*names, *n);
		*names = NULL;
		*n = 0;
		errno = e;
		return -1;
	}
	if (*n > 1)
		qsort(*names, *n, sizeof(char *), spool_name_cmp);
	return 0;
}

void spool_names_free(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

int spool_lock_at(int dirfd, const char *name)
{
	struct stat a, b;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	/* Between our open and our lock, the holder may have renamed the directory on: only
	 * the same inode still under the same name is ours to work on. */
	if (fstat(fd, &a) < 0 || fstatat(dirfd, name, &b, AT_SYMLINK_NOFOLLOW) < 0 ||
	    a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
		close(fd);
		errno = ENOENT;
		return -1;
	}
	return fd;
}

int spool_entry_claim(struct spool *sp, enum spool_dir where, const char *qid,
                      struct spool_entry *e)
{
	if (!spool_qid_valid(qid)) {
		errno = EINVAL;
		return -1;
	}
	int fd = spool_lock_at(sp->fd[where], qid);
	if (fd < 0)
		return errno == ENOENT || errno == EWOULDBLOCK ? 0 : -1;
	e->sp = sp;
	e->where = where;
	memcpy(e->qid, qid, SPOOL_QID_LEN + 1);
	e->fd = fd;
	e->synced = 0;
	return 1;
}

int spool_set_aside(struct spool *sp, enum spool_dir where, const char *name, const struct stat *sb)
{
	char qid[SPOOL_QID_LEN + 1], aside[64];
	spool_qid_new(qid);
	snprintf(aside, sizeof aside, ".unclaimable.%s", qid);
	const char *dn = spool_dir_name(where);
	if (renameat(sp->fd[where], name, sp->fd[where], aside) < 0) {
		log_warn(NULL, "cannot set aside %s/%s/%s: %s", sp->root, dn, name,
		         strerror(errno));
		return 0;
	}
	struct buf r, esc;
	buf_init(&r);
	buf_init(&esc);
	escape_bytes(&esc, name, strlen(name), 1024);
	buf_printf(&r,
	           "a directory (owner uid %ld, mode %04o) this user cannot move: set aside as "
	           "%s/%s; remove it by hand\n",
	           (long)sb->st_uid, (unsigned)(sb->st_mode & 07777), dn, aside);
	/* Built in tmp/ and committed by one rename, as every badmail/ entry. */
	int ok = mkdirat(sp->fd[SD_TMP], qid, 0770) == 0;
	int dfd = ok ? openat(sp->fd[SD_TMP], qid, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (dfd >= 0) {
		ok = write_file_replace(dfd, ENTRY_REASON, r.data, r.len, 0640) == 0 &&
		     write_file_replace(dfd, ENTRY_ORIGIN, esc.data, esc.len, 0640) == 0 &&
		     spool_rename_noreplace(sp->fd[SD_TMP], qid, sp->fd[SD_BADMAIL], qid) == 0;
		close(dfd);
	}
	log_error(qid, "%s/%s: %s%s", dn, buf_cstr(&esc), buf_cstr(&r),
	          ok && dfd >= 0 ? "" : " (and no badmail/ entry could be made)");
	buf_free(&r);
	buf_free(&esc);
	return 1;
}

int spool_entry_claim_rw(struct spool *sp, enum spool_dir where, const char *qid,
                         struct spool_entry *e)
{
	int r = spool_entry_claim(sp, where, qid, e);
	/* AT_EACCESS: the stage's effective ids, the ones its writes will use. */
	if (r == 1 && faccessat(e->fd, ".", W_OK | X_OK, AT_EACCESS) < 0) {
		if (errno != EACCES) {
			int err = errno;
			spool_entry_release(e);
			errno = err;
			return -1;
		}
		spool_entry_release(e);
		r = -1;
		errno = EACCES;
	}
	if (r >= 0 || errno != EACCES)
		return r;
	struct stat sb;
	if (fstatat(sp->fd[where], qid, &sb, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -1;
	if (!S_ISDIR(sb.st_mode)) {
		errno = EACCES;
		return -1;
	}
	spool_set_aside(sp, where, qid, &sb);
	errno = EACCES;
	return 0;
}

void spool_entry_release(struct spool_entry *e)
{
	if (e->fd >= 0) {
		spool_sync_forget(e->fd);
		close(e->fd); /* closing the last descriptor drops the flock */
	}
	e->fd = -1;
}

int spool_entry_sync(struct spool_entry *e)
{
	/* No fallback: a failing sync is a writeback error (EIO, ENOSPC) that must stop the
	 * commit, and fsync of the directory alone would not make the files durable. The
	 * per-file sync writes only this process's entries, not every dirty page of the
	 * filesystem (another writer's); both leave the same things durable. */
	if (spool_sync_group(e) < 0)
		return -1;
	e->synced = 1;
	return 0;
}

/* Before a commit or a deletion: the renames that brought the entry here must be durable
 * (spool_entry_handoff leaves that to the stage that claims it). */
static int spool_entry_sync_once(struct spool_entry *e)
{
	return e->synced ? 0 : spool_entry_sync(e);
}

int spool_rename_noreplace(int fromfd, const char *from, int tofd, const char *to)
{
	if (renameat2(fromfd, from, tofd, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -1;
	/* A filesystem without RENAME_NOREPLACE: look first. Racy, but every name we commit
	 * to is a queue ID that only one process makes, so only a hostile local writer can
	 * lose the race, and rename(2) of a directory still refuses a non-empty target. */
	struct stat st;
	if (fstatat(tofd, to, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		errno = EEXIST;
		return -1;
	}
	if (errno != ENOENT)
		return -1;
	return renameat(fromfd, from, tofd, to);
}

/* Rename fromfd/from to tofd/<fresh queue ID>, which is copied into fresh. 0 or -1. */
static int spool_rename_fresh(int fromfd, const char *from, int tofd, char fresh[SPOOL_QID_LEN + 1])
{
	for (int tries = 0; tries < 100; tries++) {
		spool_qid_new(fresh);
		if (spool_rename_noreplace(fromfd, from, tofd, fresh) == 0)
			return 0;
		if (errno != EEXIST && errno != ENOTEMPTY)
			return -1;
	}
	return -1;
}

int spool_entry_rename(struct spool_entry *e, enum spool_dir to)
{
	struct spool *sp = e->sp;
	/* The commit: one rename of the whole directory. Its contents are already durable.
	 * Never over an existing name: a directory there (empty or not) is another message,
	 * or something a hostile writer of inbound/ arranged, and must not be replaced. */
	if (spool_rename_noreplace(sp->fd[e->where], e->qid, sp->fd[to], e->qid) < 0) {
		if (errno != EEXIST && errno != ENOTEMPTY)
			return -1;
		/* A queue ID collision (see docs/INTERNALS.md, "Queue ID collisions"): the
		 * entry moves on under a fresh ID, in the same one rename. Nothing is lost (both
		 * entries stay whole) and nothing is duplicated (it is still one rename of the
		 * one directory); retrying the same name would fail forever. The trace line is
		 * not synced: it is an aid, and a power cut only loses the line. */
		char fresh[SPOOL_QID_LEN + 1], old[SPOOL_QID_LEN + 1];
		memcpy(old, e->qid, sizeof old);
		trace_add(e->fd, old, "requeue why=collision in=%s", spool_dir_names[to]);
		if (spool_rename_fresh(sp->fd[e->where], old, sp->fd[to], fresh) < 0)
			return -1;
		log_warn(old,
		         "queue ID collision: %s/%s/%s already exists; the message moved on "
		         "as %s/%s",
		         sp->root, spool_dir_names[to], old, spool_dir_names[to], fresh);
		memcpy(e->qid, fresh, sizeof fresh);
	}
	/* The entry belongs to the next stage now: unlock at once, so that the next stage
	 * can claim it while we make the move durable. Nothing we do after this point acts
	 * on the entry's contents. */
	spool_entry_release(e);
#ifdef SPOOLD_CRASH_POINTS
	char point[64];
	snprintf(point, sizeof point, "moved-to-%s", spool_dir_names[to]);
	CRASH_POINT(point);
#endif
	e->where = to;
	return 0;
}

int spool_dirs_sync(struct spool *sp, enum spool_dir from, enum spool_dir to)
{
	/* Make the moves durable: the destination must hold the names and the source must
	 * no longer, or a crash could show an entry in both places or neither. On a
	 * journaling filesystem one rename is one transaction, and the destination's fsync
	 * commits it whole. */
	if (fsync_dir(sp->fd[to]) < 0)
		return -1;
	if (!sp->rename_journaled && fsync_dir(sp->fd[from]) < 0)
		return -1;
	return 0;
}

int spool_entry_move(struct spool_entry *e, enum spool_dir to)
{
	enum spool_dir from = e->where;
	if (spool_entry_sync_once(e) < 0 || spool_entry_rename(e, to) < 0)
		return -1;
	return spool_dirs_sync(e->sp, from, to);
}

int spool_entry_handoff(struct spool_entry *e, enum spool_dir to)
{
	/* Not fsync'd: the next stage's sync, which comes before anything it does that
	 * cannot be undone, makes this rename durable (see spool.h). */
	return spool_entry_rename(e, to);
}

/* Rename the entry into trash/<name>; if trash/ already has that name (two entries with one
 * queue ID, see spool_entry_rename), under <name>.<fresh queue ID> instead, written back
 * into name. Whatever is in trash/ is only ever removed, so any unused name will do. */
static int spool_trash_rename(struct spool_entry *e, char *name, size_t len)
{
	struct spool *sp = e->sp;
	char fresh[SPOOL_QID_LEN + 1];
	if (spool_rename_noreplace(sp->fd[e->where], e->qid, sp->fd[SD_TRASH], name) == 0)
		return 0;
	if (errno != EEXIST && errno != ENOTEMPTY)
		return -1;
	size_t base = strlen(name);
	for (int tries = 0; tries < 100; tries++) {
		spool_qid_new(fresh);
		name[base] = '\0';
		if (bsnprintf(name + base, len - base, ".%s", fresh) < 0) {
			errno = ENAMETOOLONG;
			return -1;
		}
		if (spool_rename_noreplace(sp->fd[e->where], e->qid, sp->fd[SD_TRASH], name) == 0)
			return 0;
		if (errno != EEXIST && errno != ENOTEMPTY)
			return -1;
	}
	return -1;
}

int spool_entry_retire(struct spool_entry *e)
{
	char name[2 * SPOOL_QID_LEN + 32];
	snprintf(name, sizeof name, "%s.%s", e->qid, spool_dir_names[e->where]);
	if (spool_trash_rename(e, name, sizeof name) < 0)
		return -1;
	e->where = SD_TRASH;
	return 0;
}

int spool_entry_trash(struct spool_entry *e)
{
	struct spool *sp = e->sp;
	char name[2 * SPOOL_QID_LEN + 32];
	snprintf(name, sizeof name, "%s.%s", e->qid, spool_dir_names[e->where]);
	/* A deletion cannot be undone: the hand-off that brought the entry here must be
	 * durable first, or a power cut could bring back its earlier state after the
	 * entry is gone here. */
	if (spool_entry_sync_once(e) < 0)
		return -1;
	/* Out of its state directory first, in one step: a half-deleted entry must only ever
	 * be found in trash/, never look like a message. */
	if (spool_trash_rename(e, name, sizeof name) < 0)
		return -1;
	if (fsync_dir(sp->fd[e->where]) < 0)
		return -1;
	e->where = SD_TRASH;
	/* The rename was the deletion. A tree too large to remove in one bounded walk (one
	 * made by hand in inbound/) stays in trash/ with remove_tree_at's warning. */
	if (remove_tree_at(sp->fd[SD_TRASH], name) < 0 && errno != E2BIG)
		return -1;
	return 0;
}

/* Undo a claim that did not happen: the work directory goes with the `origin` already
 * written into it (else the rmdir fails and the next recovery pass takes the empty
 * directory for a dead splitter's), removed while we still hold its lock. */
static void spool_inbound_unclaim(struct spool *sp, int fd, const char *qid)
{
	if (fd >= 0)
		unlinkat(fd, ENTRY_ORIGIN, 0);
	unlinkat(sp->fd[SD_INCOMING], qid, AT_REMOVEDIR);
	if (fd >= 0)
		close(fd);
}

int spool_inbound_claim(struct spool *sp, const char *name, struct spool_entry *e)
{
	char qid[SPOOL_QID_LEN + 1];
	int fd = -1;
	enum spool_dir where;
	/* A name that is a queue ID (spoolctl inject names its files so) keeps it, so the ID
	 * inject printed is the message's ID everywhere - unless that ID is already in use. */
	if (spool_qid_valid(name) && spool_qid_locate(sp, name, &where, NULL, 0) == 0 &&
	    mkdirat(sp->fd[SD_INCOMING], name, 0770) == 0) {
		memcpy(qid, name, sizeof qid);
	} else {
		for (int tries = 0;; tries++) {
			spool_qid_new(qid);
			if (mkdirat(sp->fd[SD_INCOMING], qid, 0770) == 0)
				break;
			if (errno != EEXIST || tries > 100)
				return -1;
		}
	}
	fd = openat(sp->fd[SD_INCOMING], qid, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		goto fail;
	/* Lock before the claim rename, so that no other splitter's recovery pass mistakes
	 * the new work directory for crash debris. */
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		goto fail;
	/* Record the dropped name before the claim, so that every claimed message knows
	 * where it came from even if we die right after the rename. Not fsync'd on its own:
	 * the splitter's commit makes the whole directory durable. */
	struct buf ob;
	buf_init(&ob);
	escape_bytes(&ob, name, strlen(name), 1024);
	buf_addstr(&ob, "\n");
	int wr = write_file_replace(fd, ENTRY_ORIGIN, ob.data, ob.len, 0640);
	buf_free(&ob);
	if (wr < 0)
		goto fail;
	/* The claim: one rename moves the dropped name into our private work directory.
	 * rename(2) neither follows a symlink nor opens a FIFO, so whatever was dropped is
	 * claimed without touching it; it is checked afterwards where no one can swap it. */
	if (renameat(sp->fd[SD_INBOUND], name, fd, ENTRY_MESSAGE) < 0) {
		int err = errno;
		spool_inbound_unclaim(sp, fd, qid);
		if (err == ENOENT)
			return 0; /* another splitter claimed it first */
		errno = err;
		return -1;
	}
	e->sp = sp;
	e->where = SD_INCOMING;
	memcpy(e->qid, qid, sizeof qid);
	e->fd = fd;
	e->synced = 0;
	return 1;
fail:;
	int err = errno;
	spool_inbound_unclaim(sp, fd, qid);
	errno = err;
	return -1;
}

int spool_message_open(struct spool_entry *e, char *reason, size_t rlen)
{
	struct stat st;
	int fd =
	    openat(e->fd, ENTRY_MESSAGE, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		int err = errno;
		if (err == ELOOP)
			snprintf(reason, rlen, "symbolic link (never followed)");
		else if (err == ENXIO)
			snprintf(reason, rlen, "socket or device, not a regular file");
		else
			snprintf(reason, rlen, "cannot open: %s", strerror(err));
		errno = err;
		return -1;
	}
	if (fstat(fd, &st) < 0) {
		int err = errno;
		snprintf(reason, rlen, "cannot stat: %s", strerror(err));
		close(fd);
		errno = err;
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		const char *what = S_ISFIFO(st.st_mode)   ? "FIFO"
		                   : S_ISDIR(st.st_mode)  ? "directory"
		                   : S_ISCHR(st.st_mode)  ? "character device"
		                   : S_ISBLK(st.st_mode)  ? "block device"
		                   : S_ISSOCK(st.st_mode) ? "socket"
		                                          : "special file";
		snprintf(reason, rlen, "not a regular file (%s)", what);
		close(fd);
		errno = EINVAL;
		return -1;
	}
	/* The open was non-blocking only so that a FIFO could not hang us; reads of a
	 * regular file must block normally. */
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
		int err = errno;
		snprintf(reason, rlen, "fcntl: %s", strerror(err));
		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

int spool_entry_move_sub_to_outbox(struct spool_entry *e, const char *sub, const char *conn)
{
	int ofd = spool_outbox_open(e->sp, conn);
	if (ofd < 0)
		return -1;
	int rc = 1;
	if (spool_entry_sync_once(e) < 0) {
		rc = -1;
		goto out;
	}
	/* One rename per connector: an out.<conn> that is gone was delivered already, which is
	 * what makes a restarted fan-out unable to make a second copy. */
	if (spool_rename_noreplace(e->fd, sub, ofd, e->qid) < 0) {
		char fresh[SPOOL_QID_LEN + 1];
		if (errno == ENOENT) {
			rc = 0;
		} else if (errno != EEXIST && errno != ENOTEMPTY) {
			rc = -1;
			goto out;
		} else if (spool_rename_fresh(e->fd, sub, ofd, fresh) == 0) {
			/* A queue ID collision in the outbox: this copy goes out under a fresh
			 * ID, still by the one rename that makes out.<conn> disappear. */
			log_warn(e->qid,
			         "queue ID collision: outbox/%s/%s already exists; this copy "
			         "is outbox/%s/%s",
			         conn, e->qid, conn, fresh);
		} else {
			rc = -1;
			goto out;
		}
	}
	if (fsync_dir(ofd) < 0 || (!e->sp->rename_journaled && fsync_dir(e->fd) < 0))
		rc = -1;
out:;
	int err = errno;
	close(ofd);
	errno = err;
	return rc;
}

int spool_entry_move_sub_to_incoming(struct spool_entry *e, const char *sub, const char *qid)
{
	if (!spool_qid_valid(qid)) {
		errno = EINVAL;
		return -1;
	}
	/* Its files must be on disk before the splitter can see them under incoming/. */
	if (spool_entry_sync_once(e) < 0)
		return -1;
	/* The one rename that hands the new message on: a <sub> that is gone was handed on
	 * already, so a restarted router never makes a second one. */
	if (renameat(e->fd, sub, e->sp->fd[SD_INCOMING], qid) < 0)
		return errno == ENOENT ? 0 : -1;
	/* Durable before the caller's next step (the original's final move): fsync
	 * incoming/, and the entry too where renames are not journaled. */
	if (fsync_dir(e->sp->fd[SD_INCOMING]) < 0 ||
	    (!e->sp->rename_journaled && fsync_dir(e->fd) < 0))
		return -1;
	return 1;
}

int spool_trash_empty(struct spool *sp)
{
	char **names;
	size_t n;
	int removed = 0;
	if (spool_list(sp->fd[SD_TRASH], 0, &names, &n) < 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (remove_tree_at(sp->fd[SD_TRASH], names[i]) == 0)
			removed++;
	spool_names_free(names, n);
	return removed;
}

int spool_qid_locate(struct spool *sp, const char *qid, enum spool_dir *where, char *conn,
                     size_t connlen)
{
	static const enum spool_dir order[] = {SD_INCOMING,   SD_SCAN, SD_ROUTE,
	                                       SD_QUARANTINE, SD_HOLD, SD_BADMAIL};
	struct stat st;
	int found = 0;
	if (!spool_qid_valid(qid))
		return 0;
	if (conn && connlen)
		conn[0] = '\0';
	for (size_t i = 0; i < ARRAY_LEN(order); i++) {
		if (fstatat(sp->fd[order[i]], qid, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			if (found++ == 0)
				*where = order[i];
		}
	}
	char **conns;
	size_t n;
	if (spool_list(sp->fd[SD_OUTBOX], 0, &conns, &n) == 0) {
		for (size_t i = 0; i < n; i++) {
			int ofd = openat(sp->fd[SD_OUTBOX], conns[i],
			                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (ofd < 0)
				continue;
			if (fstatat(ofd, qid, &st, AT_SYMLINK_NOFOLLOW) == 0) {
				if (found++ == 0) {
					*where = SD_OUTBOX;
					if (conn)
						snprintf(conn, connlen, "%s", conns[i]);
				}
			}
			close(ofd);
		}
		spool_names_free(conns, n);
	}
	return found;
}

int spool_entry_write(struct spool_entry *e, const char *name, const void *data, size_t n)
{
	/* A write is what puts an entry into this process's group commit (spool_sync_note). */
	if (e->sp->sync_mode != SPOOL_SYNC_SYNCFS)
		spool_sync_note(e);
	return write_file_replace(e->fd, name, data, n, 0640);
}

uint64_t spool_space_free(struct spool *sp)
{
	struct statvfs v;
	if (fstatvfs(sp->root_fd, &v) < 0)
		return UINT64_MAX;
	return (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
}

int spool_quarantine_expire(struct spool *sp, int days)
{
	char **names;
	size_t n;
	int removed = 0;
	if (days <= 0)
		return 0;
	if (spool_list(sp->fd[SD_QUARANTINE], 1, &names, &n) < 0)
		return -1;
	time_t now = time(NULL);
	for (size_t i = 0; i < n; i++) {
		struct spool_entry e;
		struct stat sb;
		if (spool_entry_claim(sp, SD_QUARANTINE, names[i], &e) != 1)
			continue;
		/* The report's time is the quarantine time; an entry without one counts from
		 * its directory's. */
		if (fstatat(e.fd, ENTRY_REPORT, &sb, AT_SYMLINK_NOFOLLOW) < 0 &&
		    fstat(e.fd, &sb) < 0) {
			spool_entry_release(&e);
			continue;
		}
		if (now - sb.st_mtime > (time_t)days * 86400) {
			/* The fleet's record (export_use names the config); the trash move syncs
			 * it before the entry goes. */
			export_entry(NULL, &e, EXPORT_EXPIRED, NULL);
			if (spool_entry_trash(&e) < 0) {
				log_warn(e.qid, "cannot expire quarantine/%s: %s", e.qid,
				         strerror(errno));
			} else {
				log_info(e.qid, "expired from quarantine after %d days", days);
				removed++;
			}
		}
		spool_entry_release(&e);
	}
	spool_names_free(names, n);
	return removed;
}

int spool_tmp_sweep(struct spool *sp, int max_age)
{
	char **names;
	size_t n;
	int removed = 0;
	if (spool_list(sp->fd[SD_TMP], 0, &names, &n) < 0)
		return 0;
	time_t now = time(NULL);
	for (size_t i = 0; i < n; i++) {
		struct stat sb;
		if (fstatat(sp->fd[SD_TMP], names[i], &sb, AT_SYMLINK_NOFOLLOW) < 0 ||
		    now - sb.st_mtime <= max_age)
			continue;
		/* Nothing in tmp/ is ever a message yet: writers move things out of it by one
		 * rename when they are complete, so what stays this long was abandoned - except
		 * the idem.* records of spoolctl inject -q, which are meant to stay a day. */
		int record = strncmp(names[i], "idem.", 5) == 0;
		if (remove_tree_at(sp->fd[SD_TMP], names[i]) == 0) {
			if (!record)
				log_warn(NULL, "removed %s/tmp/%s, abandoned by a crashed writer",
				         sp->root, names[i]);
			removed++;
		}
	}
	spool_names_free(names, n);
	return removed;
}
