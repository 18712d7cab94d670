/*
 * smtpproto - the server side of ESMTP (RFC 5321) and LMTP (RFC 2033) as a state machine
 * without I/O: the caller feeds it the client's bytes and sends what it queues in `out`.
 * lmtpd runs one per connection; tests/fuzz/fuzz_smtp.c drives it with arbitrary bytes.
 *
 * The greeting verb chooses the protocol: LHLO means LMTP (after DATA one reply per
 * accepted recipient), EHLO or HELO mean SMTP (one reply). Offered extensions:
 * PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, XFORWARD. Not offered: SMTPUTF8,
 * CHUNKING, STARTTLS, AUTH, DSN.
 *
 * Strictness (Postfix and every real MTA send CRLF; a lenient reading of line ends is
 * how SMTP smuggling works, and two readings of one message are a bypass):
 *   - Every line must end in CRLF. A command line with a bare LF, a bare CR or a NUL is
 *     answered 500. A message line with one makes the whole message fail (550 5.6.0,
 *     once the data ends), and only CRLF "." CRLF ends the data: "\n.\n", "\r.\r" and
 *     "\n.\r\n" are message content.
 *   - Command lines are at most 512 bytes with the CRLF (RFC 5321 4.5.3.1.4), message
 *     lines at most 1000 (4.5.3.1.6); longer lines are answered 500, or fail the message.
 *   - Addresses: "<addr>" with no space, no control byte, no byte over 0x7e (SMTPUTF8 is
 *     not offered), no '<' or '>' inside, no source route, at most ENV_ADDR_MAX bytes;
 *     else 501 5.1.7 (sender) or 501 5.1.3 (recipient). Parameters: MAIL takes SIZE and
 *     BODY=7BIT|8BITMIME only, RCPT none (555 5.5.4).
 *   - The message is stored with LF line ends (as Postfix's pipe(8) hands it to
 *     spoolctl inject), dot-unstuffed; a message over max_size fails with 552 5.3.4.
 *   - After SMTP_MAX_ERRORS bad commands the session is closed with 421, and so is one
 *     that sends a command line over SMTP_DISCARD_SLACK bytes, or, after its message
 *     failed, more than twice max_size plus SMTP_DISCARD_SLACK before the final dot.
 *
 * Memory and work per session are bounded: one line buffer, the envelope (max_rcpts), the
 * XFORWARD text (SMTP_XFWD_MAX); the caller bounds `out` by not feeding input while it is
 * large (smtp_input stops at SMTP_OUT_HIGH).
 *
 * DIAGNOSTICS
 *   None: every client error is a reply. The callbacks report the environment's.
 */
#ifndef SPOOLD_SMTPPROTO_H
#define SPOOLD_SMTPPROTO_H

#include <stddef.h>
#include <stdint.h>

#include "envelope.h"
#include "util.h"

#define SMTP_CMD_LINE_MAX  512
#define SMTP_DATA_LINE_MAX 1000
#define SMTP_XFWD_MAX      1024
#define SMTP_MAX_ERRORS    20
#define SMTP_OUT_HIGH      65536
#define SMTP_DISCARD_SLACK (1u << 20)

enum smtp_state {
	SMTP_S_GREETED, /* no LHLO/EHLO/HELO yet */
	SMTP_S_READY,   /* greeted, no transaction */
	SMTP_S_MAIL,    /* MAIL accepted, no recipient yet */
	SMTP_S_RCPT,    /* at least one recipient accepted */
	SMTP_S_DATA,    /* reading the message */
	SMTP_S_COMMIT,  /* message complete; waiting for smtp_commit_done */
	SMTP_S_CLOSED   /* QUIT or 421: send `out`, then close */
};

struct smtp_ops {
	/* MAIL: may the transaction start? NULL yes, else the whole reply line without CRLF
	 * (a "421 ..." reply closes the session). size is the SIZE parameter, 0 if none. */
	const char *(*mail)(void *ctx, uint64_t size);
	/* DATA: open the queue file for s->env. 0, or -1 (the reply is 451). */
	int (*data_begin)(void *ctx);
	/* Message bytes, LF line ends, dot-unstuffed. A write error is the caller's to
	 * remember and report in smtp_commit_done. */
	void (*data_write)(void *ctx, const char *p, size_t n);
	/* The message failed (too big, bad line) or the session ends: discard it. */
	void (*data_abort)(void *ctx);
	/* The message is complete: commit it, then call smtp_commit_done. */
	void (*data_end)(void *ctx);
};

struct smtp_sess {
	const struct smtp_ops *ops;
	void *ctx;
	uint64_t max_size; /* SIZE: the largest message accepted, in bytes as stored */
	size_t max_rcpts;
	enum smtp_state state;
	int lmtp;
	int errors;
	/* The line being read; `over` counts the bytes that did not fit. */
	char line[SMTP_DATA_LINE_MAX + 1];
	size_t llen;
	size_t over;
	char prev_byte; /* the last byte consumed */
	struct envelope env;
	size_t n_rcpt_ok; /* RCPT commands answered 250 (LMTP owes one reply each) */
	uint64_t data_size;
	int data_crlf;         /* the last message line ended in CRLF */
	const char *data_fail; /* the reply for a message that failed, NULL while good */
	struct buf xforward;   /* " name=value" pairs, escaped (kv_add) */
	struct buf out;
	char hostname[128];
};

void smtp_sess_init(struct smtp_sess *s, const struct smtp_ops *ops, void *ctx,
                    const char *hostname, uint64_t max_size, size_t max_rcpts);
/* Abort a message in progress (data_abort) and free everything. */
void smtp_sess_free(struct smtp_sess *s);
/* Queue the 220 greeting. */
void smtp_greet(struct smtp_sess *s);
/* Consume client bytes. Returns how many were used: fewer than n when the session
 * waits for a commit (SMTP_S_COMMIT), closed, or has SMTP_OUT_HIGH bytes of replies
 * queued; the caller keeps the rest and feeds it again later. */
size_t smtp_input(struct smtp_sess *s, const char *p, size_t n);
/* The commit of the message ended: fail NULL means it is durable in inbound/ as qid,
 * else the reply line to give (each LMTP recipient gets it). Back to SMTP_S_READY. */
void smtp_commit_done(struct smtp_sess *s, const char *fail, const char *qid);
/* Queue a reply line (without CRLF) and close, e.g. "421 4.4.2 timeout". */
void smtp_close_with(struct smtp_sess *s, const char *reply);
/* Parse the path of MAIL/RCPT ("<addr>" then optional " params"); copies the address
 * into addr and sets *params past the '>' (at "" or at " ..."). 0, or -1 bad syntax.
 * Exposed for tests. */
int smtp_path_parse(const char *arg, int allow_empty, char *addr, size_t alen, const char **params);

#endif
