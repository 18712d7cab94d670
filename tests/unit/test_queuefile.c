// links:
/*
 * Unit tests for the queue file's X record (issue 19): the XFORWARD attributes lmtpd
 * writes for the trace. Anyone who can write inbound/ can write one, so the reader
 * accepts only escaped name=value tokens with XFORWARD's names; a table of values that
 * must be refused or accepted, and the head parser on files with and without the record.
 */
#include <string.h>

#include "envelope.h"
#include "queuefile.h"
#include "util.h"
#include "check.h"

struct attr_case {
	const char *attrs;
	int ok;
};

static const struct attr_case attr_cases[] = {
    {"addr=192.0.2.7", 1},
    {"name=mx.example addr=192.0.2.7 proto=ESMTP helo=mx.example", 1},
    {"name=a port=25 ident=x source=REMOTE", 1},
    {"helo=a\\x5cb\\x3dc", 1}, /* escaped backslash and '=' */
    {"name=\\x00", 1},         /* a NUL as the client sent it, escaped */
    {"", 1},
    {"reason=clean", 0}, /* not an XFORWARD name */
    {"addr=1 reason=clean", 0},
    {"ADDR=1", 0}, /* names are written lower case */
    {"addr", 0},
    {"=1", 0},
    {"addr=1 ", 0}, /* no trailing space */
    {" addr=1", 0},
    {"addr=1  name=a", 0}, /* one space between tokens */
    {"addr=a b", 0},       /* "b" is no token */
    {"addr=a\tb", 0},
    {"addr=a\rb", 0},
    {"addr=a\x7f", 0},
    {"addr=a\xc3\xa9", 0}, /* raw 8-bit: it would have been escaped */
    {"addr=a\\", 0},       /* a backslash must start \xHH */
    {"addr=a\\x4", 0},
    {"addr=a\\x4g", 0},
    {"addr=a\\n", 0},
};

static void check_head(void)
{
	struct envelope env;
	struct buf attrs;
	char reason[256];
	size_t used;
	buf_init(&attrs);
	const char *old = "Ss@example.com\nRa@example.org\nE\nbody";
	CHECK("a file without X reads as before",
	      queuefile_head_parse(old, strlen(old), &env, &attrs, &used, reason, sizeof reason) ==
	              0 &&
	          attrs.len == 0 && used == strlen(old) - 4 && env.n_rcpts == 1);
	envelope_free(&env);
	const char *withx = "Xaddr=192.0.2.9 helo=h\nSs@example.com\nRa@example.org\nE\nbody";
	CHECK("the X record is read and skipped",
	      queuefile_head_parse(withx, strlen(withx), &env, &attrs, &used, reason,
	                           sizeof reason) == 0 &&
	          strcmp(buf_cstr(&attrs), "addr=192.0.2.9 helo=h") == 0 &&
	          used == strlen(withx) - 4 && strcmp(env.sender, "s@example.com") == 0);
	envelope_free(&env);
	const char *bad = "Xreason=clean\nSs@example.com\nRa@example.org\nE\n";
	CHECK("a forged X record is refused with a reason",
	      queuefile_head_parse(bad, strlen(bad), &env, &attrs, &used, reason, sizeof reason) <
	              0 &&
	          strstr(reason, "X record") != NULL);
	envelope_free(&env);
	char big[QUEUEFILE_ATTR_MAX + 64];
	memcpy(big, "Xaddr=", 6);
	memset(big + 6, '1', sizeof big - 6);
	CHECK("an X record over the bound, or without its LF, is refused",
	      queuefile_head_parse(big, sizeof big, &env, NULL, &used, reason, sizeof reason) < 0);
	envelope_free(&env);
	const char *twox = "Xaddr=1\nXaddr=2\nSs@example.com\nRa@example.org\nE\n";
	CHECK("a second X record is an unexpected record",
	      queuefile_head_parse(twox, strlen(twox), &env, NULL, &used, reason, sizeof reason) <
	          0);
	envelope_free(&env);
	buf_free(&attrs);
}

int main(void)
{
	char name[160];
	for (size_t i = 0; i < ARRAY_LEN(attr_cases); i++) {
		const struct attr_case *c = &attr_cases[i];
		struct buf b;
		buf_init(&b);
		escape_bytes(&b, c->attrs, strlen(c->attrs), 64);
		snprintf(name, sizeof name, "X record %s: '%s'", c->ok ? "accepted" : "refused",
		         buf_cstr(&b));
		buf_free(&b);
		CHECK(name, (queuefile_attrs_check(c->attrs, strlen(c->attrs)) == 0) == c->ok);
	}
	check_head();
	return failures ? 1 : 0;
}
