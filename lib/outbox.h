/*
 * outbox - the delivery side of outbox/<connector>/<qid>/ (docs/OUTBOX.md), shared by
 * the bundled connectors: claim an entry, keep its retry state, finish it.
 *
 * An entry is claimed with flock on its directory, so several agents can drain one
 * outbox. Retry state lives in the entry ("deliver": attempts, first, next, last reply),
 * so a restarted connector keeps the schedule. A delivered entry leaves by one rename
 * into trash/; a permanently failed one by one rename into badmail/ with a reason.
 *
 * DIAGNOSTICS
 *   Functions return -1 with errno set on failure and log nothing.
 */
#ifndef SPOOLD_OUTBOX_H
#define SPOOLD_OUTBOX_H

#include <stdint.h>

#include "envelope.h"
#include "spool.h"

struct outbox_entry {
	struct spool *sp;
	int dirfd; /* outbox/<conn>/ */
	int fd;    /* the entry, flock'd */
	char conn[65];
	char qid[SPOOL_QID_LEN + 1];
};

/* A name spoolctl flush creates (and removes) in outbox/<conn>/ to wake its connector. */
#define OUTBOX_FLUSH_NAME ".flush"

struct outbox_state {
	uint64_t attempts;
	uint64_t first; /* unix time of the first attempt */
	uint64_t next;  /* unix time before which no new attempt is made */
};

/* 1 claimed; 0 busy or gone; -1 error. */
int outbox_entry_claim(struct spool *sp, int dirfd, const char *conn, const char *qid,
                       struct outbox_entry *e);
void outbox_entry_release(struct outbox_entry *e);
void outbox_state_read(struct outbox_entry *e, struct outbox_state *st);
/* Record a temporary failure: attempts+1, next = now + back-off (min doubling to max,
 * with jitter), the reply kept for humans. */
int outbox_defer(struct outbox_entry *e, struct outbox_state *st, int min, int max,
                 const char *reply);
/* spoolctl flush: the next attempt is due now (attempts and first are kept). 0 or -1. */
int outbox_retry_now(struct outbox_entry *e);
/* Delivered: rename into trash/<qid>.<conn>, then remove. */
int outbox_done(struct outbox_entry *e);
/* Permanent failure: rename into badmail/<qid> with a "reason" file (or, when badmail/<qid>
 * exists already from another connector's bounce, add the reason there and drop this
 * copy). */
int outbox_bounce(struct outbox_entry *e, const char *reason);

#endif
