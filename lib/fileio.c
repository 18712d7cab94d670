/*
 * fileio - see fileio.h.
 */
#include "fileio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nettle/sha2.h>

#include "log.h"
#include "strconv.h"

int self_dir(char *out, size_t n)
{
	char self[PATH_MAX];
	ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
	if (k <= 0)
		return -1;
	self[k] = '\0';
	char *slash = strrchr(self, '/');
	if (slash == NULL)
		return -1;
	*slash = '\0';
	return bsnprintf(out, n, "%s", self);
}

void close_keep_errno(int fd)
{
	if (fd < 0)
		return;
	int e = errno;
	close(fd);
	errno = e;
}

int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = write(fd, c, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

ssize_t pread_full(int fd, void *p, size_t n, off_t off)
{
	char *c = p;
	size_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, c + got, n - got, off + (off_t)got);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* Read fd from its own offset to its end (read, so a pipe too), retrying on EINTR, and
 * hand each chunk to take: 0 at the end, or -1 (EFBIG once more than max bytes came, or
 * take's or read's errno). The one read loop of read_file_owned_at and
 * copy_stream_bounded: the bound is checked before a chunk is taken, so no more than max
 * bytes ever reach the sink. */
static int util_read_each(int fd, uint64_t max, int (*take)(void *arg, const char *p, size_t n),
                          void *arg)
{
	char tmp[65536];
	uint64_t total = 0;
	for (;;) {
		ssize_t r = read(fd, tmp, sizeof tmp);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			return 0;
		total += (uint64_t)r;
		if (total > max) {
			errno = EFBIG;
			return -1;
		}
		if (take(arg, tmp, (size_t)r) < 0)
			return -1;
	}
}

static int util_buf_take(void *arg, const char *p, size_t n)
{
	buf_add(arg, p, n);
	return 0;
}

static int util_fd_take(void *arg, const char *p, size_t n)
{
	return write_all(*(const int *)arg, p, n);
}

int copy_stream_bounded(int src, int dst, uint64_t max)
{
	return util_read_each(src, max, util_fd_take, &dst);
}

int read_file_at(int dirfd, const char *name, struct buf *out, size_t max)
{
	return read_file_owned_at(dirfd, name, out, max, (uid_t)-1, NULL);
}

void read_file_owned_reason(char *reason, size_t rlen, const char *name, uid_t owner, uid_t found,
                            int err)
{
	if (err == EPERM && found != (uid_t)-1)
		snprintf(reason, rlen,
		         "%s: belongs to uid %ld, not to uid %ld that writes it: treated as not "
		         "written",
		         name, (long)found, (long)owner);
	else
		snprintf(reason, rlen, "%s: %s", name, strerror(err));
}

int read_file_owned_at(int dirfd, const char *name, struct buf *out, size_t max, uid_t owner,
                       uid_t *found)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	/* Trust by ownership, decided on the descriptor that is then read: a file swapped in
	 * after the check is never the one read. Root's files pass: root can do anything. */
	if (owner != (uid_t)-1) {
		struct stat st;
		if (fstat(fd, &st) < 0)
			goto fail;
		if (found)
			*found = st.st_uid;
		if (st.st_uid != owner && st.st_uid != 0) {
			errno = EPERM;
			goto fail;
		}
	}
	/* out->len + read > max fails, as the bound is on the whole buffer */
	if (util_read_each(fd, out->len > max ? 0 : max - out->len, util_buf_take, out) < 0)
		goto fail;
	close(fd);
	buf_cstr(out);
	return 0;
fail:
	close_keep_errno(fd);
	return -1;
}

int open_fresh_at(int dirfd, const char *name, int flags, mode_t mode)
{
	for (int tries = 0; tries < 3; tries++) {
		if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
			return -1;
		int fd =
		    openat(dirfd, name, flags | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
		if (fd >= 0 || errno != EEXIST)
			return fd;
	}
	return -1;
}

static int write_file_tmp_rename(int dirfd, const char *name, const void *data, size_t n,
                                 mode_t mode, int sync)
{
	char tmp[256];
	if (bsnprintf(tmp, sizeof tmp, "%s.tmp", name) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	/* A file of our own, made fresh: a name.tmp left by a crash, or planted by another
	 * user of a separated spool's group, is removed, never opened and written through
	 * (its owner would then own what we wrote, and could change it later). */
	int fd = open_fresh_at(dirfd, tmp, O_WRONLY, mode);
	if (fd < 0)
		return -1;
	if (write_all(fd, data, n) < 0 || (sync && fsync(fd) < 0))
		goto fail;
	if (close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	/* The rename makes the file appear whole or not at all, to readers and after a
	 * crash of the process; with sync, the data is on disk before the name points at it. */
	if (renameat(dirfd, tmp, dirfd, name) < 0)
		goto fail;
	return 0;
fail:;
	int e = errno;
	close_keep_errno(fd);
	unlinkat(dirfd, tmp, 0);
	errno = e;
	return -1;
}

int write_file_atomic(int dirfd, const char *name, const void *data, size_t n, mode_t mode)
{
	return write_file_tmp_rename(dirfd, name, data, n, mode, 1);
}

int write_file_replace(int dirfd, const char *name, const void *data, size_t n, mode_t mode)
{
	return write_file_tmp_rename(dirfd, name, data, n, mode, 0);
}

static void util_sha256_finish(struct sha256_ctx *c, char hex[65])
{
	static const char hx[] = "0123456789abcdef";
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_digest(c, sizeof d, d);
	for (size_t i = 0; i < sizeof d; i++) {
		hex[2 * i] = hx[d[i] >> 4];
		hex[2 * i + 1] = hx[d[i] & 15];
	}
	hex[64] = '\0';
}

void util_sha256_hex(const void *p, size_t n, char hex[65])
{
	struct sha256_ctx c;
	sha256_init(&c);
	sha256_update(&c, n, p);
	util_sha256_finish(&c, hex);
}

/* Both copies: pread from offset 0 (the source's own offset is left alone), the hash
 * only when asked for. */
static int util_copy(int src, int dst, char *hex)
{
	struct sha256_ctx c;
	char tmp[65536];
	off_t off = 0;
	sha256_init(&c);
	for (;;) {
		/* pread_full's EINTR and short-read loop: a chunk is a whole buffer but at the
		 * end, so the bytes and their order are those of single preads */
		ssize_t r = pread_full(src, tmp, sizeof tmp, off);
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		if (hex)
			sha256_update(&c, (size_t)r, (const uint8_t *)tmp);
		if (write_all(dst, tmp, (size_t)r) < 0)
			return -1;
		off += r;
	}
	if (hex)
		util_sha256_finish(&c, hex);
	return 0;
}

int copy_fd_sha256(int src, int dst, char hex[65])
{
	return util_copy(src, dst, hex);
}

int copy_fd(int src, int dst)
{
	return util_copy(src, dst, NULL);
}

int fsync_dir(int dirfd)
{
	if (fsync(dirfd) < 0 && errno != EINVAL)
		return -1;
	return 0;
}

/* One walk of remove_tree_at: entries seen so far, and whether a bound was hit. */
struct util_tree_walk {
	unsigned long entries;
	int over;
};

static int util_tree_remove(int parent, const char *name, unsigned depth, struct util_tree_walk *w)
{
	if (unlinkat(parent, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -1;
	/* An attacker can make a tree in inbound/ that ends up in trash/: past the bounds we
	 * stop, leave the rest, and say so, rather than recurse without end (a stack frame
	 * and a descriptor per level) or stall a stage on millions of names. */
	if (depth >= UTIL_TREE_DEPTH_MAX) {
		w->over = 1;
		errno = E2BIG;
		return -1;
	}
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	DIR *d = fdopendir(fd);
	if (d == NULL) {
		close_keep_errno(fd);
		return -1;
	}
	int rc = 0, err = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (++w->entries > UTIL_TREE_ENTRIES_MAX) {
			w->over = 1;
			rc = -1;
			err = E2BIG;
			break;
		}
		if (util_tree_remove(dirfd(d), de->d_name, depth + 1, w) < 0) {
			rc = -1;
			err = errno;
			if (w->over)
				break;
		}
	}
	closedir(d);
	if (rc == 0 && unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT) {
		rc = -1;
		err = errno;
	}
	errno = err;
	return rc;
}

int remove_tree_at(int parent, const char *name)
{
	struct util_tree_walk w = {0, 0};
	int rc = util_tree_remove(parent, name, 0, &w);
	if (rc < 0 && w.over) {
		log_warn(NULL,
		         "not removing all of %s: the tree is deeper than %d levels or holds more "
		         "than %d names; what is left stays for an administrator",
		         name, UTIL_TREE_DEPTH_MAX, UTIL_TREE_ENTRIES_MAX);
		errno = E2BIG;
	}
	return rc;
}
