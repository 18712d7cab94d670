/*
 * router internals shared by the router's .c files.
 *
 * strip.c   cuts MIME entities out of the raw message by the byte ranges the splitter
 *           recorded (checked against their sha256), every other byte as received.
 * notice.c  writes notification messages as new outbox entries.
 */
#ifndef ROUTER_ROUTER_H
#define ROUTER_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "envelope.h"
#include "spool.h"
#include "util.h"

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

#endif
