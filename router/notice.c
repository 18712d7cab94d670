/*
 * notice - notification messages as outbox entries of their own.
 *
 * A notice is built in tmp/<qid>/ (message, envelope, trace, each fsync'd, then the
 * directory) and enters outbox/<conn>/ by one rename, the same contract as routed mail
 * (docs/OUTBOX.md): a delivery agent never sees half a notice. A crash before the rename
 * leaves only tmp/ debris and no notice: notices are at most once, never duplicated.
 */
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "router.h"
#include "trace.h"

int notice_write(struct spool *sp, const char *conn, const struct envelope *env, const char *msg,
                 size_t len, const char *about_qid, char qid_out[SPOOL_QID_LEN + 1])
{
	int dfd = -1, ofd = -1, tfd = -1, rc = -1, err;
	struct buf eb;
	buf_init(&eb);
	for (int tries = 0;; tries++) {
		spool_qid_new(qid_out);
		if (mkdirat(sp->fd[SD_TMP], qid_out, 0770) == 0)
			break;
		if (errno != EEXIST || tries > 100)
			goto out;
	}
	dfd = openat(sp->fd[SD_TMP], qid_out, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		goto out;
	envelope_format(env, &eb);
	if (write_file_atomic(dfd, "message", msg, len, 0640) < 0 ||
	    write_file_atomic(dfd, "envelope", eb.data, eb.len, 0640) < 0)
		goto out;
	trace_add(dfd, qid_out, "notice about=%s connector=%s", about_qid, conn);
	tfd = openat(dfd, "trace", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (tfd < 0 || fsync(tfd) < 0 || fsync_dir(dfd) < 0)
		goto out;
	ofd = spool_outbox_open(sp, conn);
	if (ofd < 0)
		goto out;
	/* The commit: the complete entry appears in the outbox at once. */
	if (renameat(sp->fd[SD_TMP], qid_out, ofd, qid_out) < 0)
		goto out;
	if (fsync_dir(ofd) < 0 || fsync_dir(sp->fd[SD_TMP]) < 0)
		goto out;
	rc = 0;
out:
	err = errno;
	if (rc < 0 && dfd >= 0)
		remove_tree_at(sp->fd[SD_TMP], qid_out);
	if (tfd >= 0)
		close(tfd);
	if (dfd >= 0)
		close(dfd);
	if (ofd >= 0)
		close(ofd);
	buf_free(&eb);
	errno = err;
	return rc;
}
