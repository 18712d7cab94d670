/*
 * router internals shared by the router's .c files.
 *
 * strip.c   cuts MIME entities out of the raw message by the byte ranges the splitter
 *           recorded (checked against their sha256), every other byte as received.
 * notice.c  writes notification messages as new outbox entries.
 * hold.c    reads and writes the hold record and decides expiry and retries (pure
 *           functions of the record and the time, unit-tested in tests/unit/test_route.c).
 *
 * The stage itself (router.c: claim, trust checks, dispatch, the hold timer) uses:
 * decide.c  the decision from manifest and verdicts, connectors, banned parts, escaping.
 * quarantine.c  quarantine/, hold/ and discard: the moves that do not deliver.
 * deliver.c the fan-out into the outboxes and the message as delivered.
 * derive.c  strip: the derivative for incoming/ and the quarantined original.
 */
#ifndef ROUTER_ROUTER_H
#define ROUTER_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "export.h"
#include "envelope.h"
#include "manifest.h"
#include "spool.h"
#include "stage.h"
#include "util.h"
#include "verdict.h"

/* One MIME entity to cut out of a message: bytes [start, end), which must hash to
 * sha256 (hex), with what the notice that replaces it says. */
struct strip_cut {
	uint64_t start, end;
	const char *sha256;
	unsigned part;
	const char *virus;
	const char *filename;
};
/* Append to out the message msg[0..len) with each cut's range replaced by a short
 * text/plain notice, every other byte as it is. cuts is sorted in place. Fails (-1, why
 * filled, out partly written) when there is no cut, a range is not inside the message,
 * its bytes do not hash to the recorded sha256, or two different ranges overlap; the
 * same range twice is one cut. */
int strip_apply(const char *msg, size_t len, struct strip_cut *cuts, size_t n, struct buf *out,
                struct buf *why);
/* The line break the message uses: "\r\n" if its first line ends so, else "\n". */
const char *strip_eol(const char *msg, size_t len);

/* Write a notice as a new entry of outbox/<conn>/: tmp/<qid>/ with message, envelope and
 * trace, fsync'd, then one rename into the outbox. 0, or -1 with errno (the caller logs:
 * a notice is best effort, never a reason to hold mail). qid_out gets the new ID. */
int notice_write(struct spool *sp, const char *conn, const struct envelope *env, const char *msg,
                 size_t len, const char *about_qid, char qid_out[SPOOL_QID_LEN + 1]);

/* The hold record (hold.c). Times are signed: see hold.c on clock steps. */
struct hold_state {
	uint64_t attempts;
	int64_t first; /* unix time of the first hold, 0 if unknown */
	int64_t next;  /* unix time of the next retry; INT64_MAX: never */
	int manual;    /* held by spoolctl hold: never retried by the timer */
};
/* Parse a record ("hold attempts=.. first=.. next=.."); anything malformed reads as 0. */
void hold_parse(const char *s, struct hold_state *h);
/* hold_parse of dirfd's "hold" file; an absent or unreadable file reads as all 0. */
void hold_read(int dirfd, struct hold_state *h);
/* The record's line, newline included. */
void hold_format(const struct hold_state *h, struct buf *out);
/* 1 if the hold has lasted more than max_hold seconds at now. A first in the future (the
 * clock stepped back) or unknown (0) never expires. */
int hold_expired(const struct hold_state *h, int64_t now, int64_t max_hold);
/* 1 if the retry is due at now: next has passed, or next is more than horizon seconds
 * ahead (written under a clock that stepped back since). Never for a manual hold. */
int hold_due(const struct hold_state *h, int64_t now, int64_t horizon);
/* Count one more attempt held at now and set next by exponential back-off from
 * retry_min to retry_max, plus up to a quarter of jitter from rnd. first is set to now
 * if unknown or in the future. Returns the delay. */
int64_t hold_schedule(struct hold_state *h, int64_t now, int64_t retry_min, int64_t retry_max,
                      unsigned rnd);
/* 1 if the held entry in dirfd was held before at (its hold file is older) and its
 * verdicts have an error line from scanner: mail that scanner's recovery may release. */
int hold_held_for(int dirfd, const char *scanner, int64_t at);

/* ---- the router stage's pieces ------------------------------------------------------ */

enum outcome { OUT_DELIVER, OUT_QUARANTINE, OUT_HOLD, OUT_BANNED, OUT_UNSCANNABLE };

/* decide.c. Text from outside as one escaped line of at most maxin input bytes, or as a
 * block whose line breaks stay. */
void router_text(struct buf *out, const char *s, size_t maxin);
void router_text_block(struct buf *out, const char *s);
/* One part's verdict from all its lines (infected, clean, or error: not scanned clean). */
enum verdict router_part_verdict(const struct verdicts *vs, int part);
/* A part as a report names it: its escaped file name, or "raw, no filename", or "-". */
void router_part_label(const struct manifest_part *p, struct buf *out);
/* What to do with a message; why gets one line per reason. */
enum outcome router_decide(const struct manifest *m, const struct verdicts *vs, struct buf *why);
/* The connector for one recipient: the first whose domain patterns match, else default. */
const char *router_connector_for(const struct conf *c, const char *rcpt);
/* How many parts are banned (flags[i] set for each, if given); why names them. */
int router_banned(const struct conf_router *rc, const struct manifest *m, struct buf *why,
                  unsigned char *flags);
/* The distinct virus names, escaped, comma-separated. */
void router_viruses(const struct verdicts *vs, struct buf *out);

/* quarantine.c. Each final move exits temp (75) when it cannot be made. */
void router_quarantine_report(struct spool_entry *e, const struct envelope *env,
                              const struct manifest *m, const struct verdicts *vs, const char *why,
                              const char *reason, const char *derived);
void router_quarantine_move(struct spool_entry *e, const char *reason);
void router_quarantine(struct spool_entry *e, const struct envelope *env, const struct manifest *m,
                       const struct verdicts *vs, const char *why, const char *reason);
void router_hold(struct stage *st, struct spool_entry *e, const char *why);
void router_discard(struct spool_entry *e, const struct envelope *env, const struct verdicts *vs);

/* deliver.c */
void router_fanout_finish(struct spool_entry *e);
void router_drop_outs(struct spool_entry *e);
void router_hdr_text(struct buf *h, const char *s, size_t max);
void router_deliver_scanned(struct stage *st, struct spool_entry *e, const struct envelope *env,
                            const struct verdicts *vs, const char *extra_hdr,
                            const struct buf *body);

/* derive.c */
int router_strip(struct stage *st, struct spool_entry *e, const struct manifest *m,
                 const struct verdicts *vs, struct buf *out, struct buf *why);
int router_derived(struct spool_entry *e, char of[SPOOL_QID_LEN + 1]);
void router_strip_finish(struct spool_entry *e);
void router_strip_commit(struct spool_entry *e, const struct envelope *env,
                         const struct manifest *m, const struct verdicts *vs,
                         const struct buf *body, struct buf *why);

/* notice.c: admin and recipient notices for infected or banned mail (off by default). */
void router_notify(struct stage *st, const char *qid, const struct envelope *env,
                   const struct verdicts *vs, const char *action, const char *reason,
                   const char *why);

/* router.c: the config, for the fleet's event records (set by router_handle). */
extern const struct conf *router_conf;

#endif
