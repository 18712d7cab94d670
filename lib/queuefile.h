/*
 * queuefile - write queue files into inbound/ (format: docs/INTERNALS.md "Queue file
 * format"), for the intakes: lmtpd now; spoolctl inject can use it too (today it has
 * its own copy of the same steps, with one fsync per file).
 *
 * A queue file is built as tmp/<qid><suffix> - the magic line, the S/R/E envelope, the
 * message - and committed by queuefile_commit: one syncfs(2) makes the data of every file
 * in the batch durable, each is renamed to inbound/<qid> (the splitter keeps the ID),
 * and one fsync of inbound/ (and of tmp/ where the filesystem does not journal renames
 * as one) makes the names durable. Only after that may the writer tell its client the
 * message is accepted. Several writers' files share the syncs (group commit).
 *
 * DIAGNOSTICS
 *   Nothing is logged here. Functions return -1 with errno set; a file's first write
 *   error is kept in its err and fails its commit.
 */
#ifndef SPOOLD_QUEUEFILE_H
#define SPOOLD_QUEUEFILE_H

#include <stddef.h>

#include "envelope.h"
#include "spool.h"

#define QUEUEFILE_SUFFIX_MAX 16

struct queuefile {
	char qid[SPOOL_QID_LEN + 1];
	char tmpname[SPOOL_QID_LEN + QUEUEFILE_SUFFIX_MAX + 1];
	int fd;  /* open while being written; -1 after the commit or discard */
	int err; /* errno of the first failure, 0 if none */
};

/* Make tmp/<new qid><suffix> (O_EXCL, mode 0640) and write the magic line and env into
 * it. 0, or -1 with errno (nothing is left behind). */
int queuefile_create(struct spool *sp, const char *suffix, const struct envelope *env,
                     struct queuefile *qf);
/* Append message bytes. 0, or -1 (and qf->err) on the first failure; later calls after
 * a failure do nothing and return -1. */
int queuefile_write(struct queuefile *qf, const void *p, size_t n);
/* Close and remove an uncommitted file. */
void queuefile_discard(struct spool *sp, struct queuefile *qf);
/* Commit the n files of qfs as one batch (see above). A file that fails (its own err, the
 * sync, its rename) has err set and is removed from tmp/; the others are in inbound/.
 * Returns 0, or -1 with errno when the final directory fsync failed: then the renamed
 * files are in inbound/ and will be delivered, but were not made durable, so the caller
 * must not call them accepted (a retry by its client risks a duplicate, never a loss). */
int queuefile_commit(struct spool *sp, struct queuefile **qfs, size_t n);
/* At start: remove every tmp/<qid><suffix> a killed writer left (never acknowledged, so its
 * client still has the message). Returns how many were removed; -1 if tmp/ cannot be
 * listed. */
int queuefile_recover(struct spool *sp, const char *suffix);

#endif
