/*
 * fuzz_smtp - libFuzzer target for the SMTP/LMTP state machine (lib/smtpproto.c).
 *
 * The input is a client's byte stream. It is fed to one session all at once and to a
 * second session in chunks of pseudo-random sizes (from a hash of the input); every
 * message that completes is committed, alternately accepted and refused. Checks, each
 * an abort so that libFuzzer keeps the input:
 *   - the two transcripts (every reply, every stored message byte) are identical: how
 *     the bytes are split across reads never changes what the server does;
 *   - every reply line is three digits, then ' ' or '-', ends in CRLF and has no other
 *     CR, LF or NUL;
 *   - stored message bytes contain no CR and no NUL, and no more than max_size of them;
 *   - data_begin, data_abort and data_end pair up (no write outside a message);
 *   - LMTP: the replies after the data number the accepted recipients.
 *
 * Build and run with `make -f tests/fuzz/fuzz.mk run-smtp`, or by hand from the repository
 * root:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Ilib \
 *     tests/fuzz/fuzz_smtp.c lib/smtpproto.c lib/envelope.c lib/alloc.c lib/buf.c \
 *     lib/clock.c lib/escape.c lib/fileio.c lib/strconv.c lib/log.c \
 *     -o fuzz_smtp
 *   mkdir -p /tmp/smtp_corpus && ./fuzz_smtp /tmp/smtp_corpus -max_total_time=300
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtpproto.h"
#include "util.h"

#define FUZZ_MAX_SIZE 4096

struct fuzz_run {
	struct smtp_sess s;
	struct buf transcript;
	int in_msg;
	uint64_t stored;
	unsigned commits;
};

static void fuzz_check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz_smtp: check failed: %s\n", what);
		abort();
	}
}

/* Check the queued replies, move them into the transcript. */
static void fuzz_drain(struct fuzz_run *r)
{
	const char *p = r->s.out.data;
	size_t n = r->s.out.len, i = 0;
	while (i < n) {
		const char *crlf = NULL;
		for (size_t j = i; j + 1 < n; j++)
			if (p[j] == '\r' && p[j + 1] == '\n') {
				crlf = p + j;
				break;
			}
		fuzz_check(crlf != NULL, "reply without CRLF");
		size_t len = (size_t)(crlf - (p + i));
		fuzz_check(len >= 4, "reply too short");
		for (int k = 0; k < 3; k++)
			fuzz_check(p[i + k] >= '0' && p[i + k] <= '9', "reply code not 3 digits");
		fuzz_check(p[i + 3] == ' ' || p[i + 3] == '-',
		           "reply code not followed by ' ' or '-'");
		fuzz_check(memchr(p + i, '\n', len) == NULL && memchr(p + i, '\r', len) == NULL &&
		               memchr(p + i, '\0', len) == NULL,
		           "CR, LF or NUL inside a reply");
		i += len + 2;
	}
	buf_add(&r->transcript, p, n);
	buf_reset(&r->s.out);
}

static const char *fuzz_mail(void *ctx, uint64_t size)
{
	struct fuzz_run *r = ctx;
	/* Exercise the refusals: a SIZE of 7 is "full", 13 is "paused". */
	fuzz_drain(r);
	if (size == 7)
		return "452 4.3.1 Insufficient system storage";
	if (size == 13)
		return "421 4.3.2 Service paused";
	return NULL;
}

static int fuzz_data_begin(void *ctx)
{
	struct fuzz_run *r = ctx;
	fuzz_check(!r->in_msg, "data_begin inside a message");
	fuzz_check(r->s.env.sender != NULL && r->s.env.n_rcpts > 0, "data_begin without envelope");
	r->in_msg = 1;
	r->stored = 0;
	fuzz_drain(r);
	buf_addstr(&r->transcript, "<begin>");
	return 0;
}

static void fuzz_data_write(void *ctx, const char *p, size_t n)
{
	struct fuzz_run *r = ctx;
	fuzz_check(r->in_msg, "data_write outside a message");
	fuzz_check(memchr(p, '\r', n) == NULL, "CR stored");
	fuzz_check(memchr(p, '\0', n) == NULL, "NUL stored");
	r->stored += n;
	fuzz_drain(r);
	fuzz_check(r->stored <= FUZZ_MAX_SIZE, "more than max_size stored");
	buf_add(&r->transcript, p, n);
}

static void fuzz_data_abort(void *ctx)
{
	struct fuzz_run *r = ctx;
	fuzz_check(r->in_msg, "data_abort outside a message");
	r->in_msg = 0;
	fuzz_drain(r);
	buf_addstr(&r->transcript, "<abort>");
}

static void fuzz_data_end(void *ctx)
{
	struct fuzz_run *r = ctx;
	fuzz_check(r->in_msg, "data_end outside a message");
	fuzz_check(r->s.state == SMTP_S_COMMIT, "data_end but not waiting for the commit");
	r->in_msg = 0;
	fuzz_drain(r);
	buf_addstr(&r->transcript, "<end>");
}

static const struct smtp_ops fuzz_ops = {
    .mail = fuzz_mail,
    .data_begin = fuzz_data_begin,
    .data_write = fuzz_data_write,
    .data_abort = fuzz_data_abort,
    .data_end = fuzz_data_end,
};

/* The commit: alternately accepted and refused; LMTP owes one reply per recipient. */
static void fuzz_commit(struct fuzz_run *r)
{
	size_t want = r->s.lmtp ? r->s.n_rcpt_ok : 1;
	fuzz_check(want > 0, "a message without an accepted recipient");
	size_t before = r->s.out.len;
	if (r->commits++ % 2)
		smtp_commit_done(&r->s, "451 4.3.0 refused by the fuzzer", NULL);
	else
		smtp_commit_done(&r->s, NULL, "00000000000000-000000-0000");
	size_t lines = 0;
	for (size_t i = before; i < r->s.out.len; i++)
		lines += r->s.out.data[i] == '\n';
	fuzz_check(lines == want, "not one final reply per accepted recipient");
	fuzz_check(r->s.state == SMTP_S_READY, "not ready after the commit");
}

/* Feed data[0..n) in chunks; chunk sizes from seed (0: all at once). */
static void fuzz_feed(struct fuzz_run *r, const uint8_t *data, size_t n, uint32_t seed)
{
	smtp_sess_init(&r->s, &fuzz_ops, r, "fuzz.example", FUZZ_MAX_SIZE, 5);
	buf_init(&r->transcript);
	r->in_msg = 0;
	r->commits = 0;
	smtp_greet(&r->s);
	size_t off = 0;
	while (off < n && r->s.state != SMTP_S_CLOSED) {
		size_t chunk = n - off;
		if (seed) {
			seed = seed * 1103515245u + 12345u;
			chunk = 1 + (seed >> 16) % 97;
			if (chunk > n - off)
				chunk = n - off;
		}
		size_t used = 0;
		while (used < chunk && r->s.state != SMTP_S_CLOSED) {
			size_t u = smtp_input(&r->s, (const char *)data + off + used, chunk - used);
			used += u;
			fuzz_drain(r);
			if (r->s.state == SMTP_S_COMMIT) {
				fuzz_commit(r);
				fuzz_drain(r);
			} else if (u == 0 && used < chunk && r->s.state != SMTP_S_CLOSED) {
				fuzz_check(0, "input not consumed with nothing to wait for");
			}
		}
		off += used;
		if (r->s.state == SMTP_S_CLOSED)
			break;
	}
	smtp_sess_free(&r->s);
	fuzz_check(!r->in_msg, "a message left open");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_run a, b;
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < size; i++)
		h = (h ^ data[i]) * 16777619u;
	fuzz_feed(&a, data, size, 0);
	fuzz_feed(&b, data, size, h | 1);
	fuzz_check(a.transcript.len == b.transcript.len &&
	               memcmp(a.transcript.data ? a.transcript.data : "",
	                      b.transcript.data ? b.transcript.data : "", a.transcript.len) == 0,
	           "chunked input changed the transcript");
	buf_free(&a.transcript);
	buf_free(&b.transcript);
	return 0;
}
