/*
 * export - the fleet's event records (docs/FLEET.md, docs/INTERNALS.md "Event records").
 *
 * Every state change of a message writes one record into the spool's export/ directory,
 * named export/<qid>.<seq>, before the rename that commits the change and inside the same
 * durability step: the stage writes the record, then its commit sync (syncfs) makes the
 * record durable together with the step's own files, and only then the rename commits.
 * A crash before the rename leaves a record of a transition that is then redone, and the
 * redo writes the same name again (seq is fixed per transition kind, hold round and
 * requeue pass, export_seq), so the database, whose rows are unique on (node, qid, seq),
 * sees it once.
 * A crash after the rename finds the record already durable.
 *
 * A record is a small text file, one "key value" per line, values escaped as
 * text_escape does (bounded; a sender chooses the subject, so it never chooses a size),
 * between a first line "spoold-event 1" and a last line "end". It is written as
 * export/.<name>.<pid>.tmp and renamed into place, so the exporter sees it whole or not.
 *
 * Nothing here stops mail: with no `fleet` group every call is a no-op; past
 * fleet.max_backlog records (a node whose database is away), or on a write error, the
 * record is dropped, counted (spoold_export_dropped_total{why}) and logged, and the
 * transition goes on.
 *
 * DIAGNOSTICS
 *   export_entry and export_event never fail: they return 1 when a record was written,
 *   0 when none was (off, or dropped). export_record_parse returns -1 on a malformed
 *   record (the exporter sets it aside). log_panic on an unknown kind.
 */
#ifndef SPOOLD_EXPORT_H
#define SPOOLD_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "spool.h"

enum export_kind {
	EXPORT_INTAKE = 1,     /* splitter: split, handed to scan/ */
	EXPORT_SCANNED = 2,    /* scanner-runner: verdicts written, with their summary */
	EXPORT_OUTBOX = 3,     /* router: fan-out plan committed (routed to outbox/) */
	EXPORT_QUARANTINE = 4, /* router: moved to quarantine/ */
	EXPORT_HOLD = 5,       /* router: moved to hold/ */
	EXPORT_BADMAIL = 6,    /* splitter or router: moved to badmail/ */
	EXPORT_DISCARD = 7,    /* router: infected and discarded */
	EXPORT_RELEASED = 8,   /* spoolctl quarantine release */
	EXPORT_DELETED = 9,    /* spoolctl quarantine delete, spoolctl delete */
	EXPORT_EXPIRED = 10,   /* quarantine expiry */
	EXPORT_DELIVERED = 20, /* a connector delivered (+ the connector's index) */
	EXPORT_BOUNCED = 60,   /* a connector bounced (+ the connector's index) */
};
#define EXPORT_CONN_MAX 40  /* connectors past this share the last seq */
#define EXPORT_ROUND    100 /* seq = round * EXPORT_ROUND + kind (+ connector index) */
/* round = pass * EXPORT_PASS_ROUNDS + hold round: hold rounds stop at 100,000, so the
 * rounds of two passes never meet. */
#define EXPORT_PASS_ROUNDS 1000000ULL

/* Flags of export_event. */
#define EXPORT_SYNC 1 /* fsync the record and export/ now: the caller's commit has no sync */

/* The state name of a kind, as stored in the database ("quarantine", "delivered"...). */
const char *export_kind_state(int kind);
/* The kind of a state name, -1 if none. */
int export_state_kind(const char *state);

/* The record's seq: round * EXPORT_ROUND + kind (+ connector index for delivered and
 * bounced). round is pass * EXPORT_PASS_ROUNDS + the hold round of the work directory:
 * the hold round is the attempts of its `hold` file (0 without one), so a message held
 * and scanned again makes new records instead of repeating old keys; the pass is the
 * count of its `requeues` file (0 without one, export_requeued), so a message that
 * `spoolctl requeue` or `flush hold` sends through the pipeline again, which starts it
 * afresh without a `hold` file, does too. */
int64_t export_seq(int kind, uint64_t round, int conn_index);

/* Write the record of kind for the work directory dirfd (message qid), reading what the
 * kind needs from it (envelope, message headers, verdicts, hold). conn: the connector
 * (delivered, bounced), else NULL; detail: a reason, a reply, who asked; may be NULL.
 * 1 written, 0 not (see DIAGNOSTICS). */
int export_event(const struct conf *c, struct spool *sp, int dirfd, const char *qid, int kind,
                 const char *conn, const char *detail, int flags);
/* export_event for a claimed entry. A written record clears e->synced, so the entry's
 * commit move (spool_entry_move, _trash, _move_sub_to_outbox) syncs the record first even
 * when the stage synced its step before this call. */
int export_entry(const struct conf *c, struct spool_entry *e, int kind, const char *detail);

/* The entry e is sent through the pipeline again (spoolctl requeue, flush hold): its
 * `requeues` file counts one more pass, so that the records of the next pass have keys
 * of their own. Written with spool_entry_write and e->synced cleared: the caller's commit
 * move makes it durable before the entry moves, so every record of the next pass, and a
 * redo of one after a crash, reads the same count. No-op (0) without a `fleet` group; 0,
 * or -1 with errno when the file cannot be written. */
int export_requeued(const struct conf *c, struct spool_entry *e);

/* The pass of the work directory from_dirfd, carried into the outbox entry being built in
 * to_dirfd (the router's out.<conn>/): the connector's delivered and bounced records then
 * have the pass of the rest of that pass's records, and a connector's badmail/ entry
 * that is requeued counts on from it. Written as a decimal count without a sync of its
 * own (the fan-out plan's syncfs covers it). No file when the pass is 0 (absent is 0);
 * 0, or -1 with errno. The outbox entry has no `hold` file, so its hold round is 0:
 * a message reaches an outbox once per pass, so the pass alone keys those records. */
int export_pass_copy(int from_dirfd, int to_dirfd);

/* The config export_entry(NULL, ...) uses (lib/spool.c's quarantine expiry). */
void export_use(const struct conf *c);

/* Open export/ (created on demand with create, mode 2770 under the stages' umask). -1
 * with errno when absent or unreadable. The descriptor is the caller's. */
int export_dir_open(struct spool *sp, int create);
/* Records in export/ now (names that are records; dot files are not). -1 on error. */
long export_backlog(int exportfd, int64_t *oldest_time);

/* Is name a record's name (<qid>.<seq>)? Fills qid and seq. */
int export_name_parse(const char *name, char qid[SPOOL_QID_LEN + 1], int64_t *seq);

/* A parsed record: values stay escaped as written; rcpts and viruses are '\n'-joined. */
struct export_record {
	char qid[SPOOL_QID_LEN + 1];
	int64_t seq;
	int kind;
	int64_t time_us; /* microseconds since the epoch */
	char *node, *sender, *rcpts, *subject, *message_id, *from, *class, *viruses, *conn, *detail;
	int64_t size;
};
int export_record_parse(const char *data, size_t n, struct export_record *r);
void export_record_free(struct export_record *r);

#endif
