/*
 * queuefile - see queuefile.h.
 */
#include "queuefile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

int queuefile_create(struct spool *sp, const char *suffix, const struct envelope *env,
                     struct queuefile *qf)
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
	for (size_t i = 0; i < n; i++) {
		struct queuefile *qf = qfs[i];
		if (qf->fd >= 0 && close(qf->fd) < 0 && qf->err == 0)
			qf->err = errno; /* a writeback error can show here first */
		qf->fd = -1;
	}
	/* The data of every file (its envelope too) before any name appears in inbound/:
	 * the splitter acts on a name the moment it is there. One syncfs covers the batch. */
	int serr = syncfs(sp->fd[SD_TMP]) < 0 ? errno : 0;
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
