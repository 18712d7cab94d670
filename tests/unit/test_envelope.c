// links:
/*
 * Unit tests for envelope addresses and the files with an end record (issue 14, L1 and
 * L12): a table of addresses that must be refused or accepted, for plain and SMTPUTF8
 * envelopes; queue-file records with CRLF, bare CR and the U record; and bytes after the
 * last record of envelope, manifest and verdicts files, which make them incomplete.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "envelope.h"
#include "manifest.h"
#include "util.h"
#include "verdict.h"
#include "check.h"

struct addr_case {
	const char *addr;
	int ascii_ok; /* valid in a plain envelope */
	int utf8_ok;  /* valid in an SMTPUTF8 envelope */
};

static const struct addr_case addr_cases[] = {
    {"user@example.org", 1, 1},
    {"", 1, 1}, /* the null sender */
    {"postmaster", 1, 1},
    {"first.last+tag@sub.example.org", 1, 1},
    {"srs0=abcd=xy=example.org=user@example.net", 1, 1},
    {"user@[192.0.2.1]", 1, 1},
    {"user@[IPv6:2001:db8::1]", 1, 1},
    /* ESMTP parameter smuggling and path breaking */
    {"a@b> NOTIFY=NEVER", 0, 0},
    {"a@b>", 0, 0},
    {"<a@b>", 0, 0},
    {"a@b NOTIFY=NEVER", 0, 0},
    {"a@b\tSIZE=1", 0, 0},
    {"a@b ORCPT=rfc822;x@y", 0, 0},
    {"a@b,c@d", 0, 0},
    {"a@b;c", 0, 0},
    {"a(comment)@b", 0, 0},
    {"\"a b\"@example.org", 0, 0},
    {"a\\@b", 0, 0},
    /* control bytes */
    {"a@b\r\nRCPT TO:<x@y>", 0, 0},
    {"a@b\r", 0, 0},
    {"a@b\n", 0, 0},
    {"a\x1b[31m@b", 0, 0},
    {"a\x7f@b", 0, 0},
    {"a\x01@b", 0, 0},
    /* non-ASCII: only SMTPUTF8, and only well-formed UTF-8 without C1 controls */
    {"j\xc3\xbcrgen@example.org", 0, 1},        /* ü */
    {"user@\xe4\xbe\x8b\xe3\x81\x88.jp", 0, 1}, /* 例え */
    {"a\xf0\x9f\x98\x80@b", 0, 1},              /* U+1F600 */
    {"a\xff@b", 0, 0},
    {"a\xc3@b", 0, 0},             /* truncated */
    {"a\xc0\xaf@b", 0, 0},         /* overlong '/' */
    {"a\xe0\x80\xaf@b", 0, 0},     /* overlong */
    {"a\xed\xa0\x80@b", 0, 0},     /* surrogate */
    {"a\xf4\x90\x80\x80@b", 0, 0}, /* above U+10FFFF */
    {"a\xc2\x9b@b", 0, 0},         /* U+009B, the C1 CSI */
    {"a\xc2\x85@b", 0, 0},         /* U+0085, NEL */
    {"a\xc2\xa0@b", 0, 1},         /* U+00A0 is not a control */
};

static int parse_str(const char *s, struct envelope *env, size_t *used, char *reason, size_t rlen)
{
	return envelope_parse(s, strlen(s), env, used, reason, rlen);
}

static int write_at(int dfd, const char *name, const char *data)
{
	return write_file_replace(dfd, name, data, strlen(data), 0640);
}

int main(void)
{
	char name[160];
	const char *why;
	for (size_t i = 0; i < ARRAY_LEN(addr_cases); i++) {
		const struct addr_case *c = &addr_cases[i];
		snprintf(name, sizeof name, "addr_ascii_%zu", i);
		CHECK(name, (envelope_addr_check(c->addr, 0, &why) == 0) == c->ascii_ok);
		snprintf(name, sizeof name, "addr_utf8_%zu", i);
		CHECK(name, (envelope_addr_check(c->addr, 1, &why) == 0) == c->utf8_ok);
	}
	char long_addr[ENV_ADDR_MAX + 8];
	memset(long_addr, 'a', sizeof long_addr - 1);
	long_addr[sizeof long_addr - 1] = '\0';
	CHECK("addr_too_long", envelope_addr_check(long_addr, 1, &why) < 0);

	/* Records. */
	struct envelope env;
	char reason[256];
	size_t used = 0;
	CHECK("parse_plain",
	      parse_str("Sa@b\nRc@d\nE\nbody", &env, &used, reason, sizeof reason) == 0 &&
	          used == 12 && strcmp(env.sender, "a@b") == 0 && env.n_rcpts == 1 &&
	          !env.smtputf8);
	envelope_free(&env);
	CHECK("parse_crlf_records",
	      parse_str("Sa@b\r\nRc@d\r\nE\r\n", &env, &used, reason, sizeof reason) == 0 &&
	          strcmp(env.sender, "a@b") == 0 && strcmp(env.rcpts[0], "c@d") == 0);
	envelope_free(&env);
	CHECK("parse_bare_cr_rejected",
	      parse_str("Sa@b\nRc@d\rRCPT TO:<x@y>\nE\n", &env, &used, reason, sizeof reason) < 0);
	CHECK("parse_esmtp_param_rejected",
	      parse_str("Sa@b\nRc@d> NOTIFY=NEVER\nE\n", &env, &used, reason, sizeof reason) < 0 &&
	          strstr(reason, "recipient") != NULL);
	CHECK("parse_sender_param_rejected",
	      parse_str("Sa@b> RET=FULL\nRc@d\nE\n", &env, &used, reason, sizeof reason) < 0);
	CHECK("parse_utf8_needs_U",
	      parse_str("Sa@b\nRj\xc3\xbcrgen@d\nE\n", &env, &used, reason, sizeof reason) < 0);
	CHECK("parse_utf8_with_U", parse_str("U\nSa@b\nRj\xc3\xbcrgen@d\nE\n", &env, &used, reason,
	                                     sizeof reason) == 0 &&
	                               env.smtputf8 == 1 && env.n_rcpts == 1);
	struct buf fb;
	buf_init(&fb);
	envelope_format(&env, &fb);
	CHECK("format_keeps_U", strcmp(buf_cstr(&fb), "U\nSa@b\nRj\xc3\xbcrgen@d\nE\n") == 0);
	buf_free(&fb);
	envelope_free(&env);
	CHECK("parse_U_after_S_rejected",
	      parse_str("Sa@b\nU\nRc@d\nE\n", &env, &used, reason, sizeof reason) < 0);
	CHECK("parse_no_rcpt", parse_str("Sa@b\nE\n", &env, &used, reason, sizeof reason) < 0);
	CHECK("parse_empty_rcpt",
	      parse_str("Sa@b\nR\nE\n", &env, &used, reason, sizeof reason) < 0);

	/* A plain envelope refuses a UTF-8 recipient; after the flag it accepts it. */
	envelope_init(&env);
	env.sender = xstrdup("a@b");
	CHECK("add_rcpt_utf8_plain", envelope_add_rcpt(&env, "j\xc3\xbcrgen@d") < 0);
	CHECK("add_rcpt_param", envelope_add_rcpt(&env, "c@d> NOTIFY=NEVER") < 0);
	env.smtputf8 = 1;
	CHECK("add_rcpt_utf8_flag", envelope_add_rcpt(&env, "j\xc3\xbcrgen@d") == 0);
	CHECK("check_ok", envelope_check(&env, reason, sizeof reason) == 0);
	env.smtputf8 = 0;
	CHECK("check_utf8_without_flag", envelope_check(&env, reason, sizeof reason) < 0);
	envelope_free(&env);

	/* Files with an end record: bytes after it make the file incomplete (L12). */
	char root[] = "/tmp/envelope-unit-XXXXXX";
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	int dfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		perror(root);
		return 1;
	}
	write_at(dfd, "envelope", "Sa@b\nRc@d\nE\n");
	CHECK("envelope_file_ok", envelope_read_at(dfd, &env, reason, sizeof reason) == 0);
	envelope_free(&env);
	write_at(dfd, "envelope", "Sa@b\nRc@d\nE\nRx@y\n");
	CHECK("envelope_file_trailing", envelope_read_at(dfd, &env, reason, sizeof reason) < 0 &&
	                                    strstr(reason, "incomplete") != NULL);
	write_at(dfd, "envelope", "Sa@b\nRc@d\nE\nx");
	CHECK("envelope_file_trailing_partial",
	      envelope_read_at(dfd, &env, reason, sizeof reason) < 0);

	struct manifest m;
	struct buf mb;
	buf_init(&mb);
	manifest_init(&m);
	manifest_add(&m, "1", FOUND_LEAF, "text/plain", "us-ascii", "7bit", "", 0);
	manifest_format(&m, &mb);
	manifest_free(&m);
	write_at(dfd, "manifest", buf_cstr(&mb));
	CHECK("manifest_ok", manifest_read_at(dfd, &m, reason, sizeof reason) == 0);
	manifest_free(&m);
	buf_addstr(&mb, "part 2 path=2 found=leaf\n");
	write_at(dfd, "manifest", buf_cstr(&mb));
	CHECK("manifest_trailing", manifest_read_at(dfd, &m, reason, sizeof reason) < 0 &&
	                               strstr(reason, "incomplete") != NULL);
	buf_free(&mb);

	struct verdicts vs;
	struct buf vb;
	buf_init(&vb);
	verdicts_init(&vs);
	verdicts_add(&vs, 1, "clamscan", V_CLEAN, "", "0", 5, "1", "clamscan", "");
	verdicts_format(&vs, &vb);
	verdicts_free(&vs);
	write_at(dfd, "verdicts", buf_cstr(&vb));
	CHECK("verdicts_ok", verdicts_read_at(dfd, &vs, reason, sizeof reason) == 0 && vs.n == 1);
	verdicts_free(&vs);
	buf_addstr(&vb, "scan part=1 scanner=x verdict=infected\n");
	write_at(dfd, "verdicts", buf_cstr(&vb));
	CHECK("verdicts_trailing", verdicts_read_at(dfd, &vs, reason, sizeof reason) < 0 &&
	                               strstr(reason, "incomplete") != NULL);
	buf_free(&vb);

	unlinkat(dfd, "envelope", 0);
	unlinkat(dfd, "manifest", 0);
	unlinkat(dfd, "verdicts", 0);
	close(dfd);
	rmdir(root);
	printf("%s\n", failures ? "FAILED" : "OK");
	return failures ? 1 : 0;
}
