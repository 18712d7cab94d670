/*
 * fileio - descriptors, whole files and durability: the file-system steps the spool is
 * built from.
 *
 * Reads and writes retry on EINTR and short counts. Files are opened O_CLOEXEC and
 * O_NOFOLLOW. A file written whole appears whole or not at all (a temporary renamed over
 * the name). The *_at functions take names relative to a directory descriptor.
 *
 * DIAGNOSTICS
 *   Unless noted, the functions return 0 (or a count) on success and -1 with errno set;
 *   the caller decides whether that is a warning or fatal, and names the path. On
 *   filesystems that cannot fsync a directory (EINVAL), fsync_dir treats that as success,
 *   as Dovecot's fdatasync_path does. remove_tree_at also logs a warning when a tree
 *   exceeds its bounds. Running out of memory ends the process (alloc.h).
 */
#ifndef SPOOLD_FILEIO_H
#define SPOOLD_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"

/* close(fd) on a failure path: errno stays the one of the failure being reported, not
 * close's (Dovecot's close_keep_errno). fd < 0 is ignored. */
void close_keep_errno(int fd);
/* The directory of the running program (/proc/self/exe without its last component), for
 * finding the programs installed or built beside it. 0, or -1 (no /proc, too long). */
int self_dir(char *out, size_t n);

/* Write all of p to fd, retrying on EINTR and short writes. 0 or -1. */
int write_all(int fd, const void *p, size_t n);
/* Read n bytes at off, retrying on EINTR and short reads: the count read (less than n
 * only at the end of the file), or -1. */
ssize_t pread_full(int fd, void *p, size_t n, off_t off);

/* Create name in dirfd as a new file of the caller's (O_EXCL, O_NOFOLLOW), removing
 * whatever had the name: never write through a file someone else made or still holds.
 * flags: O_WRONLY or O_RDWR, plus extras. -1 with errno. */
int open_fresh_at(int dirfd, const char *name, int flags, mode_t mode);

/* Read a whole file (at most max bytes, else -1 with EFBIG). NUL-terminated. */
int read_file_at(int dirfd, const char *name, struct buf *out, size_t max);
/* read_file_at, but only a file that belongs to owner (or to root): another owner fails
 * with EPERM, and *found (if not NULL) says who it was. owner (uid_t)-1: no check. */
int read_file_owned_at(int dirfd, const char *name, struct buf *out, size_t max, uid_t owner,
                       uid_t *found);
/* The reason text for a failed read_file_owned_at of name (err: its errno). */
void read_file_owned_reason(char *reason, size_t rlen, const char *name, uid_t owner, uid_t found,
                            int err);

/* Create dir/name.tmp, write data, fsync, rename to name. 0 or -1 with errno. The
 * directory itself is not fsync'd: the caller batches that (group commit). */
int write_file_atomic(int dirfd, const char *name, const void *data, size_t n, mode_t mode);
/* The same without the fsync: durable only after a later sync of the filesystem
 * (spool_entry_sync). For files that are part of one commit. */
int write_file_replace(int dirfd, const char *name, const void *data, size_t n, mode_t mode);

/* Copy all bytes of fd src (from offset 0) into fd dst. 0 or -1. */
int copy_fd(int src, int dst);
/* Copy fd src from its own offset to its end (read: a pipe too) into fd dst: 0, or -1
 * with errno, EFBIG once more than max bytes came (what came before is written). */
int copy_stream_bounded(int src, int dst, uint64_t max);
/* Copy the whole of src (from offset 0) to dst and its SHA-256 as 64 hex digits: the hash
 * is of exactly the bytes written. -1 with errno. */
int copy_fd_sha256(int src, int dst, char hex[65]);
/* SHA-256 of p[0..n) as 64 hex digits, the form copy_fd_sha256 gives: for checking a
 * file read whole against the hash taken when it was copied. */
void util_sha256_hex(const void *p, size_t n, char hex[65]);

int fsync_dir(int dirfd);

/* Remove a directory tree below dirfd/name, never following symlinks. 0 or -1. The walk
 * is bounded, as trees in the spool can be made by anyone who can write inbound/: at most
 * UTIL_TREE_DEPTH_MAX levels below name and UTIL_TREE_ENTRIES_MAX names in all. Past a
 * bound it stops, logs a warning, leaves what is left and returns -1 with errno E2BIG
 * (the spool's own trees are a few levels and a few thousand names at most). */
#define UTIL_TREE_DEPTH_MAX   32
#define UTIL_TREE_ENTRIES_MAX 100000
int remove_tree_at(int dirfd, const char *name);

#endif
