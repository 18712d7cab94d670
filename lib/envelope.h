/*
 * envelope - sender and recipients of a message (format in docs/INTERNALS.md).
 *
 * Addresses are bounded (ENV_ADDR_MAX) and may not contain control bytes; at most
 * ENV_RCPT_MAX recipients. Parsing returns -1 with a reason for malformed input.
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
	char *sender; /* "" for the null sender */
	char **rcpts;
	size_t n_rcpts;
};

void envelope_init(struct envelope *env);
void envelope_free(struct envelope *env);
/* Validate one address. 0 or -1. */
int envelope_addr_valid(const char *addr);
/* 0, or -1 if invalid / too many. */
int envelope_add_rcpt(struct envelope *env, const char *rcpt);
/* Serialize as S/R/E records (no magic line). */
void envelope_format(const struct envelope *env, struct buf *out);
/* Parse S/R/E records from p[0..n). On success returns 0 and sets *used to the number of
 * bytes consumed (through the E line). -1 with reason on malformed input. */
int envelope_parse(const char *p, size_t n, struct envelope *env, size_t *used, char *reason,
                   size_t rlen);
/* Read the "envelope" file of a work directory. 0 or -1 (reason filled). */
int envelope_read_at(int dirfd, struct envelope *env, char *reason, size_t rlen);
/* The domain part of an address, lower-cased into out. */
void envelope_addr_domain(const char *addr, char *out, size_t outlen);

#endif
