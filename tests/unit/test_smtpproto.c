// links:
/*
 * test_smtpproto - unit test of the SMTP/LMTP state machine (lib/smtpproto.c): the
 * address syntax table, and whole sessions whose replies are compared line by line.
 *
 * Prints one line per check, "PASS name" or "FAIL name: why", and exits 1 if any failed.
 */
#include <stdio.h>
#include <string.h>

#include "smtpproto.h"
#include "check.h"

static struct buf stored;
static int ended;

static void t_write(void *ctx, const char *p, size_t n)
{
	(void)ctx;
	buf_add(&stored, p, n);
}

static void t_end(void *ctx)
{
	(void)ctx;
	ended++;
}

static const struct smtp_ops t_ops = {.data_write = t_write, .data_end = t_end};

/* Run a session over input (fed in pieces of `step` bytes; 0: whole), committing each
 * message as "Q"; returns the reply codes, space-separated, in codes. */
static void t_session(const char *input, size_t step, char *codes, size_t clen)
{
	struct smtp_sess s;
	smtp_sess_init(&s, &t_ops, NULL, "test", 100, 3);
	smtp_greet(&s);
	size_t n = strlen(input), off = 0;
	while (off < n && s.state != SMTP_S_CLOSED) {
		size_t len = step && step < n - off ? step : n - off;
		size_t used = smtp_input(&s, input + off, len);
		off += used;
		if (s.state == SMTP_S_COMMIT)
			smtp_commit_done(&s, NULL, "Q");
	}
	codes[0] = '\0';
	size_t cl = 0;
	for (const char *p = s.out.data; p && p < s.out.data + s.out.len;) {
		const char *nl = memchr(p, '\n', (size_t)(s.out.data + s.out.len - p));
		if (nl == NULL)
			break;
		if (p[3] == ' ' && cl + 5 < clen) {
			memcpy(codes + cl, p, 3);
			codes[cl + 3] = ' ';
			cl += 4;
			codes[cl] = '\0';
		}
		p = nl + 1;
	}
	if (cl)
		codes[cl - 1] = '\0';
	smtp_sess_free(&s);
}

int main(void)
{
	static const struct {
		const char *arg;
		int allow_empty, ok;
		const char *addr;
	} paths[] = {
	    {"<a@b.example>", 0, 1, "a@b.example"},
	    {"<a@b.example> SIZE=1", 0, 1, "a@b.example"},
	    {"<>", 1, 1, ""},
	    {"<>", 0, 0, NULL},
	    {"a@b.example", 0, 0, NULL},
	    {"<a@b.example", 0, 0, NULL},
	    {"<a b@c>", 0, 0, NULL},
	    {"<a@b SIZE=1>", 0, 0, NULL},
	    {"<a\x01@b>", 0, 0, NULL},
	    {"<a\x7f@b>", 0, 0, NULL},
	    {"<\xc3\xa9@b>", 0, 0, NULL},
	    {"<@r:a@b>", 0, 0, NULL},
	    {"<a<b@c>", 0, 0, NULL},
	    {"<a@b>x", 0, 0, NULL},
	    {"<a@b>  SIZE=1", 0, 0, NULL},
	    {"<a@b> ", 0, 0, NULL},
	};
	for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
		char addr[ENV_ADDR_MAX + 1], name[64];
		const char *params;
		int r =
		    smtp_path_parse(paths[i].arg, paths[i].allow_empty, addr, sizeof addr, &params);
		snprintf(name, sizeof name, "path_%zu", i);
		CHECK(name, paths[i].ok ? r == 0 && strcmp(addr, paths[i].addr) == 0 : r < 0);
	}

	char codes[256];
	buf_init(&stored);
	const char *lmtp = "LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<c@d>\r\n"
	                   "RCPT TO:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n..x\r\ny\r\n.\r\nQUIT\r\n";
	for (size_t step = 0; step < 4; step++) {
		buf_reset(&stored);
		ended = 0;
		t_session(lmtp, step, codes, sizeof codes);
		char name[64];
		snprintf(name, sizeof name, "lmtp_per_recipient_step%zu", step);
		/* The fourth RCPT is over max_rcpts (3); three final replies, the duplicate too. */
		CHECK(name, strcmp(codes, "220 250 250 250 250 250 452 354 250 250 250 221") == 0);
		CHECK("lmtp_stored",
		      stored.len == 5 && memcmp(stored.data, ".x\ny\n", 5) == 0 && ended == 1);
	}
	t_session(
	    "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\nx\r\n.\r\n", 0,
	    codes, sizeof codes);
	CHECK("smtp_one_final_reply", strcmp(codes, "220 250 250 250 250 354 250") == 0);
	t_session("LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\n.\ny\r\n.\r\n", 1,
	          codes, sizeof codes);
	CHECK("bare_lf_no_end", strcmp(codes, "220 250 250 250 354 550") == 0);
	t_session("MAIL FROM:<a@b>\r\nLHLO x\r\nRCPT TO:<c@d>\r\nDATA\r\n", 0, codes, sizeof codes);
	CHECK("order", strcmp(codes, "220 503 250 503 503") == 0);
	t_session("LHLO x\r\nMAIL FROM:<a@b> SIZE=101\r\nMAIL FROM:<a@b> SIZE=100\r\n", 0, codes,
	          sizeof codes);
	CHECK("size", strcmp(codes, "220 250 552 250") == 0);
	buf_free(&stored);
	return failures ? 1 : 0;
}
