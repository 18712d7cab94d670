/*
 * verdict - per-part, per-scanner scan results, written by scanner-runner.
 *
 *   scan part=<index> scanner=<name> verdict=<v> virus=<name> exit=<code|sig:N|timeout|exec>
 *        ms=<duration> version=<v> argv=<escaped argv> output=<bounded excerpt>
 *   message qid=<queue ID> [sha256=<hex>]
 *   end <count>
 *
 * The message line (optional for a reader; the runner always writes it) binds the
 * verdicts to the message they are for; <count> counts scan lines.
 * verdict is one of clean, infected, error, unscannable. Message-level lines use
 * part=- (for example a degraded scanner or an over-limit manifest).
 */
#ifndef SPOOLD_VERDICT_H
#define SPOOLD_VERDICT_H

#include <stddef.h>
#include <sys/types.h>

#include "util.h"

enum verdict { V_CLEAN, V_INFECTED, V_ERROR, V_UNSCANNABLE };

struct verdict_line {
	int part; /* -1 for the whole message */
	char *scanner;
	enum verdict verdict;
	char *virus; /* "" if none */
	char *exit;  /* "0", "sig:9", "timeout", "exec" ... */
	long ms;
	char *version; /* "" if unknown */
	char *argv;    /* escaped, for the record */
	char *output;  /* bounded excerpt */
	int backup;    /* 1 if the line comes from a backup scanner */
};

struct verdicts {
	struct verdict_line *lines;
	size_t n;
	/* The queue ID the runner scanned (a `message qid=` line before `end`): verdicts are
	 * for one message, and a file moved into another entry says whose they are. NULL
	 * when the file has no such line (written by an older version). */
	char *qid;
	/* sha256= on the message line: the SHA-256 of the message as the runner scanned it
	 * (the raw part, from its own copy); NULL when not recorded. The router delivers
	 * only a message with this hash (docs/SECURITY.md). */
	char *msg_sha256;
};

const char *verdict_name(enum verdict v);
int verdict_parse_name(const char *s, enum verdict *v);
void verdicts_init(struct verdicts *vs);
void verdicts_free(struct verdicts *vs);
struct verdict_line *verdicts_add(struct verdicts *vs, int part, const char *scanner,
                                  enum verdict v, const char *virus, const char *exit, long ms,
                                  const char *version, const char *argv, const char *output);
void verdicts_format(const struct verdicts *vs, struct buf *out);
int verdicts_read_at(int dirfd, struct verdicts *vs, char *reason, size_t rlen);
/* The same, only a verdicts file that belongs to owner (the scanner-runner's user) or
 * root; another owner is "not written" (trust by ownership, docs/SECURITY.md). */
int verdicts_read_owned_at(int dirfd, struct verdicts *vs, uid_t owner, char *reason, size_t rlen);

#endif
