/*
 * queuefile - write queue files into inbound/ (format: docs/INTERNALS.md "Queue file
 * format"), for the intakes: lmtpd now; spoolctl inject can use it too (today it has
 * its own copy of the same steps, with one fsync per file).
 *
 * A queue file is built as tmp/<qid><suffix> - the magic line, an optional X record
 * (the client attributes XFORWARD told the intake, for the trace), the U/S/R/E envelope,
 * the message - and committed by queuefile_commit: one syncfs(2) (or with spool_sync
 * per file, an fdatasync of each) makes the data of every file in the batch durable, each is
 * renamed to inbound/<qid> (the splitter keeps the ID), and one fsync of inbound/ (and of tmp/
 * where the filesystem does not journal renames as one) makes the names durable. Only after that
 * may the writer tell its client the message is accepted. Several writers' files share the syncs
 * (group commit).
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
/* The longest X record value: XFORWARD's SMTP_XFWD_MAX, with room for its escapes. */
#define QUEUEFILE_ATTR_MAX 2048

struct queuefile {
	char qid[SPOOL_QID_LEN + 1];
	char tmpname[SPOOL_QID_LEN + QUEUEFILE_SUFFIX_MAX + 1];
	int fd;  /* open while being written; -1 after the commit or discard */
	int err; /* errno of the first failure, 0 if none */
};

/* Make tmp/<new qid><suffix> (O_EXCL, mode 0640) and write the magic line, the X record
 * (attrs: "name=value ..." as kv_add escapes them, leading spaces dropped; NULL or empty
 * for none) and env into it. attrs that queuefile_attrs_check refuses are left out, not
 * written. 0, or -1 with errno (nothing is left behind). */
int queuefile_create(struct spool *sp, const char *suffix, const struct envelope *env,
                     const char *attrs, struct queuefile *qf);
/* Is attrs a valid X record value: at most QUEUEFILE_ATTR_MAX bytes of space-separated
 * name=value tokens, each name one of XFORWARD's (name addr port proto helo ident
 * source, lower case), each value escape_bytes output (printable ASCII, no space, a
 * backslash only as \xHH)? Whoever can write inbound/ can write an X record, so a reader
 * trusts nothing else of it. 0, or -1. */
int queuefile_attrs_check(const char *attrs, size_t n);
/* Parse the head of a queue file after its magic line: the optional X record, then the
 * envelope (envelope_parse). attrs (may be NULL) receives the X value, or stays empty.
 * Files without an X record (all written before it existed) read as before. 0 and *used
 * set past the E record, or -1 with reason. */
int queuefile_head_parse(const char *p, size_t n, struct envelope *env, struct buf *attrs,
                         size_t *used, char *reason, size_t rlen);
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
