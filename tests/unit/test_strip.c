// links: router/strip.c splitter/mime*.c
/*
 * Unit tests for cutting MIME entities by byte ranges (router/strip.c, strip_apply), for
 * the manifest's entity fields (lib/manifest.c) and the ranges the splitter records
 * (splitter/mime*.c): a table of cuts over small messages, each with the expected result
 * or failure; and the bound on Content-* header runs that fuzz_strip made necessary.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nettle/sha2.h>

#include "../../router/router.h"
#include "manifest.h"
#include "mime.h"
#include "util.h"
#include "check.h"

static void sha_hex(const char *p, size_t n, char hex[65])
{
	struct sha256_ctx x;
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_init(&x);
	sha256_update(&x, n, (const uint8_t *)p);
	sha256_digest(&x, sizeof d, d);
	for (size_t i = 0; i < sizeof d; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

#define NOTICE(eol, virus, name)                                                                   \
	"Content-Type: text/plain; charset=us-ascii" eol "Content-Transfer-Encoding: 7bit" eol     \
	"Content-Disposition: inline" eol eol                                                      \
	"This part was removed by spoold because it contained a virus." eol "Virus: " virus eol    \
	"Original file name: " name eol

static const char M1[] = "Content-Type: multipart/mixed; boundary=X\n\n--X\nA: 1\n\naaa\n--X\n"
                         "B: 2\n\nbbb\n--X--\n";
static const char M2[] = "Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nA: 1\r\n\r\naaa"
                         "\r\n--X--\r\n";

struct range {
	long start, end; /* -1: the end of the message */
	int bad_hash;
};

static const struct strip_case {
	const char *name;
	const char *msg;
	struct range r[3];
	size_t n;
	const char *want; /* NULL: must fail */
	const char *why;  /* a substring of the reason when it fails */
} cases[] = {
    {"one cut",
     M1,
     {{47, 56, 0}},
     1,
     "Content-Type: multipart/mixed; boundary=X\n\n--X\n" NOTICE("\n", "V0",
                                                                 "f0") "\n--X\nB: "
                                                                       "2\n\nbbb\n--X--\n",
     NULL},
    {"two cuts out of order",
     M1,
     {{61, 70, 0}, {47, 56, 0}},
     2,
     "Content-Type: multipart/mixed; boundary=X\n\n--X\n" NOTICE("\n", "V1", "f1") "\n--X\n" NOTICE(
         "\n", "V0", "f0") "\n--X--\n",
     NULL},
    {"one range twice is one cut",
     M1,
     {{47, 56, 0}, {47, 56, 0}},
     2,
     "Content-Type: multipart/mixed; boundary=X\n\n--X\n" NOTICE("\n", "V0",
                                                                 "f0") "\n--X\nB: "
                                                                       "2\n\nbbb\n--X--\n",
     NULL},
    {"crlf notice",
     M2,
     {{50, 61, 0}},
     1,
     "Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\n" NOTICE("\r\n", "V0",
                                                                       "f0") "\r\n"
                                                                             "--X--\r\n",
     NULL},
    {"cut to the end",
     M1,
     {{61, -1, 0}},
     1,
     "Content-Type: multipart/mixed; boundary=X\n\n--X\nA: 1\n\naaa\n--X\n" NOTICE("\n", "V0",
                                                                                   "f0"),
     NULL},
    {"overlap", M1, {{47, 56, 0}, {50, 65, 0}}, 2, NULL, "overlap"},
    {"nested ranges overlap", M1, {{40, 76, 0}, {47, 56, 0}}, 2, NULL, "overlap"},
    {"past the end", M1, {{61, 500, 0}}, 1, NULL, "not inside"},
    {"empty range", M1, {{47, 47, 0}}, 1, NULL, "not inside"},
    {"hash mismatch", M1, {{47, 56, 1}}, 1, NULL, "sha256 differs"},
    {"no cut", M1, {{0, 0, 0}}, 0, NULL, "no part"},
};

static void strip_case_run(const struct strip_case *c)
{
	size_t len = strlen(c->msg);
	struct strip_cut cuts[3];
	char hex[3][65];
	char vname[3][24], fname[3][24];
	for (size_t i = 0; i < c->n; i++) {
		size_t e = c->r[i].end < 0 ? len : (size_t)c->r[i].end;
		size_t s = (size_t)c->r[i].start;
		/* the hash of the bytes, or of other bytes for a mismatch */
		if (s < e && e <= len)
			sha_hex(c->msg + s, e - s, hex[i]);
		else
			sha_hex("", 0, hex[i]);
		if (c->r[i].bad_hash)
			hex[i][0] = hex[i][0] == '0' ? '1' : '0';
		snprintf(vname[i], sizeof vname[i], "V%zu", i);
		snprintf(fname[i], sizeof fname[i], "f%zu", i);
		cuts[i] = (struct strip_cut){.start = s,
		                             .end = e,
		                             .sha256 = hex[i],
		                             .part = (unsigned)i + 1,
		                             .virus = vname[i],
		                             .filename = fname[i]};
	}
	struct buf out, why;
	buf_init(&out);
	buf_init(&why);
	int r = strip_apply(c->msg, len, cuts, c->n, &out, &why);
	char name[128];
	if (c->want) {
		snprintf(name, sizeof name, "strip: %s", c->name);
		CHECK(name, r == 0 && out.len == strlen(c->want) &&
		                memcmp(out.data, c->want, out.len) == 0);
		if (r != 0 || out.len != strlen(c->want) || memcmp(out.data, c->want, out.len) != 0)
			printf("  got (%d): %.*s\n  why: %s\n", r, (int)out.len,
			       out.data ? out.data : "", buf_cstr(&why));
	} else {
		snprintf(name, sizeof name, "strip: %s fails", c->name);
		CHECK(name, r < 0 && strstr(buf_cstr(&why), c->why) != NULL);
	}
	buf_free(&out);
	buf_free(&why);
}

/* The manifest's entity fields: written, read back; all three or none. */
static void manifest_entity_cases(void)
{
	char dir[] = "/tmp/test_strip.XXXXXX";
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		exit(1);
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct manifest m, r;
	struct buf b;
	char reason[256];
	manifest_init(&m);
	buf_init(&b);
	struct manifest_part *p = manifest_add(&m, "2", FOUND_LEAF, "a/b", "", "base64", "x", 1);
	p->has_entity = 1;
	p->entity_start = 10;
	p->entity_end = 99;
	memset(p->entity_sha256, 'a', 64);
	manifest_add(&m, "3", FOUND_LEAF, "a/b", "", "", "", 0);
	manifest_format(&m, &b);
	write_file_replace(dfd, "manifest", b.data, b.len, 0600);
	int rc = manifest_read_at(dfd, &r, reason, sizeof reason);
	CHECK("manifest: entity fields round trip",
	      rc == 0 && r.n_parts == 2 && r.parts[0].has_entity && r.parts[0].entity_start == 10 &&
	          r.parts[0].entity_end == 99 &&
	          strcmp(r.parts[0].entity_sha256, m.parts[0].entity_sha256) == 0 &&
	          !r.parts[1].has_entity);
	if (rc == 0)
		manifest_free(&r);
	static const char *const bad[] = {
	    "part 1 path=2 found=leaf type=a charset= cte= filename= size=0 sha256=- "
	    "entity_start=1 entity_end=5\nend 1\n",
	    "part 1 path=2 found=leaf type=a charset= cte= filename= size=0 sha256=- "
	    "entity_start=5 entity_end=5 entity_sha256=" /* empty range */
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nend 1\n",
	    "part 1 path=2 found=leaf type=a charset= cte= filename= size=0 sha256=- "
	    "entity_start=1 entity_end=5 entity_sha256=XYZ\nend 1\n",
	    "part 1 path=2 found=leaf type=a charset= cte= filename= size=0 sha256=- "
	    "entity_start=-1 entity_end=5 entity_sha256="
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nend 1\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char name[64];
		write_file_replace(dfd, "manifest", bad[i], strlen(bad[i]), 0600);
		snprintf(name, sizeof name, "manifest: malformed entity fields %zu rejected", i);
		rc = manifest_read_at(dfd, &r, reason, sizeof reason);
		CHECK(name, rc < 0);
		if (rc == 0)
			manifest_free(&r);
	}
	manifest_free(&m);
	buf_free(&b);
	unlinkat(dfd, "manifest", 0);
	close(dfd);
	rmdir(dir);
}

static const struct mime_limits test_limits = {
    .max_message_size = 1u << 24,
    .max_parts = 100,
    .max_depth = 10,
    .max_part_size = 1u << 22,
    .max_total_size = 1u << 24,
    .scan_raw = 0,
    .mem_max = MIME_MEM_MAX,
};

/* Split msg (into a fresh directory, removed after) and fill m. */
static int split_mem(const char *msg, size_t len, struct manifest *m)
{
	char dir[] = "/tmp/test_strip.XXXXXX", reason[256];
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		exit(1);
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	write_file_replace(dfd, "message", msg, len, 0600);
	int fd = openat(dfd, "message", O_RDONLY | O_CLOEXEC);
	manifest_init(m);
	int rc = mime_extract(fd, "message", dfd, &test_limits, m, reason, sizeof reason);
	close(fd);
	close(dfd);
	char cmd[64];
	snprintf(cmd, sizeof cmd, "%s", dir);
	int tfd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	remove_tree_at(tfd, cmd + 5);
	close(tfd);
	return rc;
}

/* The splitter's entity ranges: a child leaf's headers and body, the delimiter lines
 * and the line end before the next one left out; the issue 14 sample (a quoted ';' in a
 * Content-Type parameter) cut where GMime put its parts. */
static void mime_entity_cases(void)
{
	static const char q[] =
	    "From: a\nContent-Type: multipart/mixed; foo=\"z;boundary=Q\"; boundary=X\n\n--X\n"
	    "Content-Type: text/plain\n\nhello\n--Q\"\nmore\n--X\n"
	    "Content-Type: application/octet-stream\n\nvirus\n--X--\n";
	struct manifest m;
	int rc = split_mem(q, strlen(q), &m);
	const char *e1 = "Content-Type: text/plain\n\nhello\n--Q\"\nmore";
	const char *e2 = "Content-Type: application/octet-stream\n\nvirus";
	CHECK("mime: entity ranges are GMime's parts",
	      rc == 0 && m.n_parts == 2 && m.parts[0].has_entity && m.parts[1].has_entity &&
	          m.parts[0].entity_end - m.parts[0].entity_start == strlen(e1) &&
	          memcmp(q + m.parts[0].entity_start, e1, strlen(e1)) == 0 &&
	          m.parts[1].entity_end - m.parts[1].entity_start == strlen(e2) &&
	          memcmp(q + m.parts[1].entity_start, e2, strlen(e2)) == 0);
	if (rc == 0)
		manifest_free(&m);
	/* a non-multipart body and junk before a part's headers: no range */
	static const char nb[] = "From: a\nContent-Type: text/plain\n\nbody\n";
	rc = split_mem(nb, strlen(nb), &m);
	CHECK("mime: a message body has no entity range",
	      rc == 0 && m.n_parts == 1 && !m.parts[0].has_entity);
	if (rc == 0)
		manifest_free(&m);
	/* junk before a part's headers (GMime drops it, other readers start the body
	 * there): the range is still everything between the delimiters, both readings */
	static const char junk[] = "From: a\nContent-Type: multipart/mixed; boundary=X\n\n--X\n"
	                           "junk line\nContent-Type: text/plain\n\nx\n--X--\n";
	const char *ej = "junk line\nContent-Type: text/plain\n\nx";
	rc = split_mem(junk, strlen(junk), &m);
	CHECK("mime: junk before a part's headers is inside its entity range",
	      rc == 0 && m.n_parts >= 1 && m.parts[0].has_entity &&
	          m.parts[0].entity_end - m.parts[0].entity_start == strlen(ej) &&
	          memcmp(junk + m.parts[0].entity_start, ej, strlen(ej)) == 0);
	if (rc == 0)
		manifest_free(&m);
}

static void mime_content_run_case(void)
{
	struct buf b;
	buf_init(&b);
	buf_addstr(&b, "From: a\nContent-Type: multipart/mixed; boundary=X\n\n--X\n"
	               "Content-Type: text/plain");
	for (int i = 0; i < 30000; i++)
		buf_printf(&b, "; p%d=v", i);
	buf_addstr(&b, "\n\nhi\n--X--\n");
	struct manifest m;
	int64_t t0 = now_ms_monotonic();
	int rc = split_mem(b.data, b.len, &m);
	int64_t ms = now_ms_monotonic() - t0;
	CHECK("mime: a huge Content-Type is cut, not parsed",
	      rc == 0 && m.n_unscannable == 1 &&
	          strcmp(m.unscannable[0], "over limit (max_header_size)") == 0);
	printf("  (%lld ms)\n", (long long)ms);
	if (rc == 0)
		manifest_free(&m);
	buf_free(&b);
}

int main(void)
{
	mime_init();
	mime_entity_cases();
	mime_content_run_case();
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		strip_case_run(&cases[i]);
	manifest_entity_cases();
	return failures ? 1 : 0;
}
