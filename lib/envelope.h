/*
 * envelope - sender and recipients of a message (format in docs/INTERNALS.md).
 *
 * Addresses are bounded (ENV_ADDR_MAX); at most ENV_RCPT_MAX recipients. An address is
 * one SMTP path without its angle brackets: printable ASCII with no space, no control
 * byte and none of < > ( ) , ; " \ (so it can never close the path or add an ESMTP
 * parameter such as "a@b> NOTIFY=NEVER" when a connector writes "<addr>"), or, for an
 * SMTPUTF8 envelope only, also well-formed UTF-8 (no C1 controls). Parsing returns -1
 * with a reason for malformed input; nothing here logs or dies.
 */
#ifndef SPOOLD_ENVELOPE_H
#define SPOOLD_ENVELOPE_H

#include <stddef.h>
#include <sys/types.h>

#include "util.h"

#define ENV_ADDR_MAX     998
#define ENV_RCPT_MAX     10000
#define QUEUE_FILE_MAGIC "SPOOLD-QUEUE-FILE 1\n"

struct envelope {
	int smtputf8; /* the U record: addresses may carry UTF-8 (RFC 6531) */
	char *sender; /* "" for the null sender */
	char **rcpts;
	size_t n_rcpts;
};

void envelope_init(struct envelope *env);
void envelope_free(struct envelope *env);
/* Validate one address (the null sender "" is valid here). utf8: also accept well-formed
 * UTF-8 (an SMTPUTF8 envelope). 0, or -1 with *why set to a static reason. */
int envelope_addr_check(const char *addr, int utf8, const char **why);
/* envelope_addr_check for a plain (ASCII) envelope. 0 or -1. */
int envelope_addr_valid(const char *addr);
/* 1 if the address has a byte >= 0x80 (needs an SMTPUTF8 envelope). */
int envelope_addr_8bit(const char *addr);
/* Check a whole envelope before it is written or used: every address valid, non-ASCII
 * only with smtputf8, at least one recipient. 0, or -1 with reason filled. */
int envelope_check(const struct envelope *env, char *reason, size_t rlen);
/* Add a recipient, checked by envelope_addr_check (UTF-8 only if env->smtputf8 is set, so
 * set it before adding; a copy of an envelope must copy the flag first). 0, or -1 if
 * invalid / too many. */
int envelope_add_rcpt(struct envelope *env, const char *rcpt);
/* Serialize as U?/S/R/E records (no magic line). */
void envelope_format(const struct envelope *env, struct buf *out);
/* Parse U?/S/R/E records from p[0..n). A record may end in CRLF instead of LF (the CR is
 * dropped); a CR anywhere else is rejected. On success returns 0 and sets *used to the
 * number of bytes consumed (through the E line); what follows is not looked at. -1 with
 * reason on malformed input (envelope_check included). */
int envelope_parse(const char *p, size_t n, struct envelope *env, size_t *used, char *reason,
                   size_t rlen);
/* Read the "envelope" file of a work directory. Bytes after the E record make it
 * incomplete (as if absent). 0 or -1 (reason filled). */
int envelope_read_at(int dirfd, struct envelope *env, char *reason, size_t rlen);
/* The domain part of an address, lower-cased into out. */
void envelope_addr_domain(const char *addr, char *out, size_t outlen);

#endif
