/*
 * queuefile - see queuefile.h.
 */
#include "queuefile.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static const char *const queuefile_attr_names[] = {"name", "addr",  "port",   "proto",
                                                   "helo", "ident", "source", NULL};

int queuefile_attrs_check(const char *attrs, size_t n)
{
	if (n > QUEUEFILE_ATTR_MAX)
		return -1;
	size_t i = 0;
	while (i < n) {
		size_t k = i;
		while (k < n && attrs[k] >= 'a' && attrs[k] <= 'z')
			k++;
		if (k == i || k >= n || attrs[k] != '=')
			return -1;
		int known = 0;
		for (size_t j = 0; queuefile_attr_names[j]; j++)
			if (strlen(queuefile_attr_names[j]) == k - i &&
			    memcmp(queuefile_attr_names[j], attrs + i, k - i) == 0)
				known = 1;
		if (!known)
			return -1;
		/* The value as escape_bytes writes it: it cannot end the token, the line or the
		 * trace line it is copied into, and unescapes to the bytes the client sent. */
		for (i = k + 1; i < n && attrs[i] != ' '; i++) {
			unsigned char c = (unsigned char)attrs[i];
			if (c <= 0x20 || c > 0x7e)
				return -1;
			if (c == '\\' && (i + 3 >= n || attrs[i + 1] != 'x' ||
			                  !isxdigit((unsigned char)attrs[i + 2]) ||
			                  !isxdigit((unsigned char)attrs[i + 3])))
				return -1;
		}
		if (i < n) {
			i++; /* one space between tokens, none at the end */
			if (i == n)
				return -1;
		}
	}
	return 0;
}

int queuefile_head_parse(const char *p, size_t n, struct envelope *env, struct buf *attrs,
                         size_t *used, char *reason, size_t rlen)
{
	size_t off = 0;
	if (attrs)
		buf_reset(attrs);
	if (n > 0 && p[0] == 'X') {
		const char *nl =
		    memchr(p, '\n', n < QUEUEFILE_ATTR_MAX + 2 ? n : QUEUEFILE_ATTR_MAX + 2);
		if (nl == NULL) {
			envelope_init(env);
			snprintf(reason, rlen, "queue file: X record too long or unterminated");
			return -1;
		}
		size_t len = (size_t)(nl - p) - 1;
		if (queuefile_attrs_check(p + 1, len) < 0) {
			envelope_init(env);
			snprintf(reason, rlen, "queue file: malformed X record");
			return -1;
		}
		if (attrs)
			buf_add(attrs, p + 1, len);
		off = len + 2;
	}
	if (envelope_parse(p + off, n - off, env, used, reason, rlen) < 0)
		return -1;
	*used += off;
	return 0;
}

int queuefile_create(struct spool *sp, const char *suffix, const struct envelope *env,
                     const char *attrs, struct queuefile *qf)
{
	qf->fd = -1;
	qf->err = 0;
	qf->tmpname[0] = '\0';
	spool_qid_new(qf->qid);
	if (strlen(suffix) > QUEUEFILE_SUFFIX_MAX ||
	    bsnprintf(qf->tmpname, sizeof qf->tmpname, "%s%s", qf->qid, suffix) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	qf->fd = openat(sp->fd[SD_TMP], qf->tmpname, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (qf->fd < 0) {
		qf->tmpname[0] = '\0';
		return -1;
	}
	struct buf b;
	buf_init(&b);
	buf_addstr(&b, QUEUE_FILE_MAGIC);
	while (attrs && *attrs == ' ')
		attrs++;
	if (attrs && *attrs && queuefile_attrs_check(attrs, strlen(attrs)) == 0)
		buf_printf(&b, "X%s\n", attrs);
	envelope_format(env, &b);
	int r = queuefile_write(qf, b.data, b.len);
	buf_free(&b);
	if (r < 0) {
		int err = errno;
		queuefile_discard(sp, qf);
		errno = err;
		return -1;
	}
	return 0;
}

int queuefile_write(struct queuefile *qf, const void *p, size_t n)
{
	if (qf->err) {
		errno = qf->err;
		return -1;
	}
	if (qf->fd < 0) {
		qf->err = EBADF;
		errno = EBADF;
		return -1;
	}
	if (write_all(qf->fd, p, n) < 0) {
		qf->err = errno ? errno : EIO;
		errno = qf->err;
		return -1;
	}
	return 0;
}

void queuefile_discard(struct spool *sp, struct queuefile *qf)
{
	if (qf->fd >= 0)
		close(qf->fd);
	qf->fd = -1;
	if (qf->tmpname[0])
		unlinkat(sp->fd[SD_TMP], qf->tmpname, 0);
	qf->tmpname[0] = '\0';
}

int queuefile_commit(struct spool *sp, struct queuefile **qfs, size_t n)
{
	if (n == 0)
		return 0;
	/* The data of every file (its envelope too) before any name appears in inbound/:
	 * the splitter acts on a name the moment it is there. One syncfs covers the batch;
	 * or, per file (spool_sync, docs/INTERNALS.md), an fdatasync of each, which does not
	 * also write every other dirty page of the filesystem. */
	int files = spool_sync_uses_files(sp);
	for (size_t i = 0; i < n; i++) {
		struct queuefile *qf = qfs[i];
		if (files && qf->fd >= 0 && qf->err == 0 && fdatasync(qf->fd) < 0)
			qf->err = errno;
		if (qf->fd >= 0 && close(qf->fd) < 0 && qf->err == 0)
			qf->err = errno; /* a writeback error can show here first */
		qf->fd = -1;
	}
	int serr = !files && syncfs(sp->fd[SD_TMP]) < 0 ? errno : 0;
	size_t renamed = 0;
	for (size_t i = 0; i < n; i++) {
		struct queuefile *qf = qfs[i];
		if (qf->err == 0 && serr != 0)
			qf->err = serr;
		/* The commit: one rename of synced data, as every hand-off in the spool. */
		if (qf->err == 0 &&
		    renameat(sp->fd[SD_TMP], qf->tmpname, sp->fd[SD_INBOUND], qf->qid) < 0)
			qf->err = errno;
		if (qf->err != 0)
			unlinkat(sp->fd[SD_TMP], qf->tmpname, 0);
		else
			renamed++;
		qf->tmpname[0] = '\0'; /* nothing of it is left in tmp/ */
	}
	if (renamed == 0)
		return 0;
	/* The names must be durable before anyone is told "accepted": the client then
	 * deletes its copy. tmp/ too where a rename is not journaled as one transaction. */
	if (fsync_dir(sp->fd[SD_INBOUND]) < 0 ||
	    (!sp->rename_journaled && fsync_dir(sp->fd[SD_TMP]) < 0))
		return -1;
	return 0;
}

int queuefile_recover(struct spool *sp, const char *suffix)
{
	int fd = dup(sp->fd[SD_TMP]);
	if (fd < 0)
		return -1;
	DIR *d = fdopendir(fd);
	if (d == NULL) {
		int err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	rewinddir(d);
	struct dirent *de;
	size_t sl = strlen(suffix);
	int n = 0;
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (len <= sl || strcmp(de->d_name + len - sl, suffix) != 0)
			continue;
		if (unlinkat(sp->fd[SD_TMP], de->d_name, 0) == 0)
			n++;
	}
	closedir(d);
	return n;
}
