// links: splitter/mime*.c
/*
 * test_mime - unit tests of splitter/mime*.c (mime_extract, mime_envelope_from_headers).
 *
 * Each case builds a message in memory, writes it as "message" into a fresh directory
 * under a temporary base, runs mime_extract there and checks the manifest and the part
 * files. One line per check: "PASS name" or "FAIL name: why"; the exit status is 1 if
 * any check failed. The base directory is removed at the end (kept with
 * TEST_KEEP_TMP=1).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>

#include "envelope.h"
#include "manifest.h"
#include "mime.h"
#include "util.h"

static int failures, checks;
static char base[256];
static int case_no;

static void check(const char *name, int ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void check(const char *name, int ok, const char *fmt, ...)
{
	checks++;
	if (ok) {
		printf("PASS %s\n", name);
		return;
	}
	failures++;
	char why[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	printf("FAIL %s: %s\n", name, why);
}

/* ---- running mime_extract ------------------------------------------------------- */

struct run {
	int rc;
	int dirfd;
	struct manifest m;
	char reason[512];
	char dir[300];
};

static const struct mime_limits default_limits = {
    .max_message_size = 64u << 20,
    .max_parts = 500,
    .max_depth = 30,
    .max_part_size = 32u << 20,
    .max_total_size = 64u << 20,
    .scan_raw = 1,
    .mem_max = MIME_MEM_MAX,
};

/* Every extraction from memory (mem_max) is done once more from the file (mem_max 0);
 * both must give the same manifest, byte for byte. */
static unsigned twins, twins_differ;
static char twin_first[300];

static void run_free(struct run *r)
{
	manifest_free(&r->m);
	if (r->dirfd >= 0)
		close(r->dirfd);
	r->dirfd = -1;
}

static int write_message(int dirfd, const void *msg, size_t len)
{
	int fd = openat(dirfd, "message", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, msg, len);
	close(fd);
	return rc;
}

/* msg extracted again from the file, in dir.f: the same return and manifest as r? */
static void run_twin(const struct run *r, const void *msg, size_t len,
                     const struct mime_limits *lim)
{
	struct mime_limits flim = *lim;
	flim.mem_max = 0;
	char dir[320], reason[512];
	snprintf(dir, sizeof dir, "%s.f", r->dir);
	int dfd = mkdir(dir, 0700) == 0 ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (dfd < 0 || write_message(dfd, msg, len) < 0) {
		perror(dir);
		exit(2);
	}
	int fd = openat(dfd, "message", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		perror("message");
		exit(2);
	}
	struct manifest m;
	manifest_init(&m);
	int rc = mime_extract(fd, "message", dfd, &flim, &m, reason, sizeof reason);
	close(fd);
	close(dfd);
	struct buf a, b;
	buf_init(&a);
	buf_init(&b);
	manifest_format(&r->m, &a);
	manifest_format(&m, &b);
	twins++;
	if (rc != r->rc || a.len != b.len || (a.len && memcmp(a.data, b.data, a.len) != 0) ||
	    (rc != 0 && strcmp(reason, r->reason) != 0)) {
		if (twins_differ++ == 0)
			snprintf(twin_first, sizeof twin_first, "%s", r->dir);
	}
	buf_free(&a);
	buf_free(&b);
	manifest_free(&m);
}

/* Extract msg[0..len) with lim in a fresh directory. */
static void run_lim(struct run *r, const void *msg, size_t len, const struct mime_limits *lim)
{
	memset(r, 0, sizeof *r);
	manifest_init(&r->m);
	snprintf(r->dir, sizeof r->dir, "%s/c%03d", base, ++case_no);
	if (mkdir(r->dir, 0700) < 0) {
		perror(r->dir);
		exit(2);
	}
	r->dirfd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->dirfd < 0 || write_message(r->dirfd, msg, len) < 0) {
		perror(r->dir);
		exit(2);
	}
	int fd = openat(r->dirfd, "message", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		perror("message");
		exit(2);
	}
	r->rc = mime_extract(fd, "message", r->dirfd, lim, &r->m, r->reason, sizeof r->reason);
	close(fd);
	if (lim->mem_max >= len)
		run_twin(r, msg, len, lim);
}

static void run_str(struct run *r, const char *msg)
{
	run_lim(r, msg, strlen(msg), &default_limits);
}

/* The parts of a given kind, and their count. */
static struct manifest_part *part_n(struct run *r, enum part_found f, unsigned nth)
{
	unsigned k = 0;
	for (size_t i = 0; i < r->m.n_parts; i++)
		if (r->m.parts[i].found == f && k++ == nth)
			return &r->m.parts[i];
	return NULL;
}

static unsigned count_found(struct run *r, enum part_found f)
{
	unsigned k = 0;
	for (size_t i = 0; i < r->m.n_parts; i++)
		k += r->m.parts[i].found == f;
	return k;
}

static struct manifest_part *part_path(struct run *r, const char *path)
{
	for (size_t i = 0; i < r->m.n_parts; i++)
		if (r->m.parts[i].found == FOUND_LEAF && strcmp(r->m.parts[i].path, path) == 0)
			return &r->m.parts[i];
	return NULL;
}

static int has_unscannable(struct run *r, const char *reason)
{
	for (size_t i = 0; i < r->m.n_unscannable; i++)
		if (strcmp(r->m.unscannable[i], reason) == 0)
			return 1;
	return 0;
}

/* The bytes of a part file. */
static int read_part(struct run *r, const struct manifest_part *p, struct buf *out)
{
	char name[16];
	manifest_part_name(p->index, name);
	buf_reset(out);
	return read_file_at(r->dirfd, name, out, 256u << 20);
}

static int part_is(struct run *r, const struct manifest_part *p, const void *data, size_t len)
{
	struct buf b;
	buf_init(&b);
	int ok = p && read_part(r, p, &b) == 0 && b.len == len &&
	         memcmp(b.data ? b.data : "", data, len) == 0;
	buf_free(&b);
	return ok;
}

static int part_is_str(struct run *r, const struct manifest_part *p, const char *s)
{
	return part_is(r, p, s, strlen(s));
}

static void sha256_hex(const void *p, size_t n, char out[65])
{
	GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
	g_checksum_update(c, p, (gssize)n);
	snprintf(out, 65, "%s", g_checksum_get_string(c));
	g_checksum_free(c);
}

/* Every part file has the size and sha256 of its manifest entry, and the directory
 * holds nothing but "message" and NNNN.ATT files (one per part). Returns NULL or why. */
static const char *dir_consistent(struct run *r, char *why, size_t wlen)
{
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < r->m.n_parts; i++) {
		struct manifest_part *p = &r->m.parts[i];
		char h[65];
		if (p->index != i + 1 || read_part(r, p, &b) < 0) {
			snprintf(why, wlen, "part %zu: missing or misnumbered", i + 1);
			goto bad;
		}
		sha256_hex(b.data ? b.data : "", b.len, h);
		if (b.len != p->size || strcmp(h, p->sha256) != 0) {
			snprintf(why, wlen, "part %u: size/sha256 differ from the manifest",
			         p->index);
			goto bad;
		}
	}
	DIR *d = opendir(r->dir);
	struct dirent *de;
	size_t files = 0;
	while (d && (de = readdir(d)) != NULL) {
		const char *n = de->d_name;
		if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, "message"))
			continue;
		files++;
		if (strlen(n) != 8 || strspn(n, "0123456789") != 4 || strcmp(n + 4, ".ATT") != 0) {
			snprintf(why, wlen, "unexpected file %.64s", n);
			closedir(d);
			goto bad;
		}
	}
	if (d)
		closedir(d);
	if (files != r->m.n_parts) {
		snprintf(why, wlen, "%zu files for %zu parts", files, r->m.n_parts);
		goto bad;
	}
	buf_free(&b);
	return NULL;
bad:
	buf_free(&b);
	return why;
}

static void check_consistent(const char *name, struct run *r)
{
	char why[512];
	const char *w = r->rc == 0 ? dir_consistent(r, why, sizeof why) : "mime_extract failed";
	check(name, w == NULL, "%s (rc=%d %s)", w ? w : "", r->rc, r->reason);
}

static const char *summary(struct run *r)
{
	static char s[2048];
	size_t o = (size_t)snprintf(s, sizeof s, "rc=%d [%s]", r->rc, r->reason);
	for (size_t i = 0; i < r->m.n_parts && o < sizeof s - 100; i++) {
		struct manifest_part *p = &r->m.parts[i];
		o += (size_t)snprintf(s + o, sizeof s - o, " %u:%s:%s:%s:%llu", p->index, p->path,
		                      manifest_found_name(p->found), p->type,
		                      (unsigned long long)p->size);
	}
	for (size_t i = 0; i < r->m.n_unscannable && o < sizeof s - 100; i++)
		o += (size_t)snprintf(s + o, sizeof s - o, " !%s", r->m.unscannable[i]);
	return s;
}

/* ---- message builders ------------------------------------------------------------ */

static char *b64(const void *p, size_t n)
{
	gchar *e = g_base64_encode(p, n);
	/* wrap at 76 like a mailer */
	struct buf b;
	buf_init(&b);
	size_t len = strlen(e);
	for (size_t i = 0; i < len; i += 76) {
		buf_add(&b, e + i, len - i < 76 ? len - i : 76);
		buf_addstr(&b, "\n");
	}
	g_free(e);
	return (char *)buf_cstr(&b);
}

static void uuencode(struct buf *b, const char *name, const unsigned char *p, size_t n)
{
	buf_printf(b, "begin 644 %s\n", name);
	for (size_t i = 0; i < n; i += 45) {
		size_t k = n - i < 45 ? n - i : 45;
		char line[80];
		size_t o = 0;
		line[o++] = (char)(k ? 32 + k : '`');
		for (size_t j = 0; j < k; j += 3) {
			unsigned char c0 = p[i + j], c1 = j + 1 < k ? p[i + j + 1] : 0,
			              c2 = j + 2 < k ? p[i + j + 2] : 0;
			unsigned v[4] = {c0 >> 2u, ((c0 & 3u) << 4) | (c1 >> 4u),
			                 ((c1 & 15u) << 2) | (c2 >> 6u), c2 & 63u};
			for (int q = 0; q < 4; q++)
				line[o++] = (char)(v[q] ? 32 + v[q] : '`');
		}
		line[o++] = '\n';
		buf_add(b, line, o);
	}
	buf_addstr(b, "`\nend\n");
}

static void yencode(struct buf *b, const char *name, const unsigned char *p, size_t n)
{
	buf_printf(b, "=ybegin line=128 size=%zu name=%s\n", n, name);
	size_t col = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)(p[i] + 42);
		if (c == 0 || c == '\n' || c == '\r' || c == '=') {
			char e[2] = {'=', (char)(c + 64)};
			buf_add(b, e, 2);
			col += 2;
		} else {
			buf_add(b, &c, 1);
			col++;
		}
		if (col >= 128) {
			buf_addstr(b, "\n");
			col = 0;
		}
	}
	buf_printf(b, "\n=yend size=%zu\n", n);
}

/* BinHex 4.0 with only the data fork (CRCs are written as zero: not checked). */
static void binhex(struct buf *b, const char *name, const unsigned char *p, size_t n)
{
	static const char alpha[] =
	    "!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr";
	struct buf raw;
	buf_init(&raw);
	unsigned char nl = (unsigned char)strlen(name);
	buf_add(&raw, &nl, 1);
	buf_add(&raw, name, nl);
	unsigned char hdr[21] = {0};
	hdr[11] = (unsigned char)(n >> 24); /* version(1) type(4) creator(4) flags(2) */
	hdr[12] = (unsigned char)(n >> 16);
	hdr[13] = (unsigned char)(n >> 8);
	hdr[14] = (unsigned char)n;
	buf_add(&raw, hdr, sizeof hdr); /* + rlen(4)=0 + hcrc(2) */
	buf_add(&raw, p, n);
	unsigned char crc[4] = {0};
	buf_add(&raw, crc, 4); /* dcrc, rcrc */
	/* run-length: a literal 0x90 is 0x90 0x00 */
	struct buf rle;
	buf_init(&rle);
	for (size_t i = 0; i < raw.len; i++) {
		unsigned char c = (unsigned char)raw.data[i];
		buf_add(&rle, &c, 1);
		if (c == 0x90) {
			unsigned char z = 0;
			buf_add(&rle, &z, 1);
		}
	}
	buf_addstr(b, "(This file must be converted with BinHex 4.0)\n:");
	unsigned bits = 0;
	int nbits = 0, col = 1;
	for (size_t i = 0; i <= rle.len; i++) {
		if (i < rle.len) {
			bits = (bits << 8) | (unsigned char)rle.data[i];
			nbits += 8;
		} else if (nbits > 0) {
			bits <<= 6 - nbits;
			nbits = 6;
		}
		while (nbits >= 6) {
			nbits -= 6;
			buf_add(b, &alpha[(bits >> nbits) & 63], 1);
			if (++col == 64) {
				buf_addstr(b, "\n");
				col = 0;
			}
		}
	}
	buf_addstr(b, ":\n");
	buf_free(&raw);
	buf_free(&rle);
}

static const char HDR[] = "From: Alice <alice@example.org>\nTo: bob@example.net\n"
                          "Subject: test\nMIME-Version: 1.0\n";

/* ---- the cases -------------------------------------------------------------------- */

static void t_single_part(void)
{
	struct run r;
	run_str(&r, "From: a@example.org\nTo: b@example.org\nSubject: hi\n\nHello world\n");
	struct manifest_part *p = part_path(&r, "1");
	check("single_part_leaf",
	      r.rc == 0 && p && count_found(&r, FOUND_LEAF) == 1 &&
	          !strcmp(p->type, "text/plain") && part_is_str(&r, p, "Hello world\n"),
	      "%s", summary(&r));
	struct manifest_part *raw = &r.m.parts[r.m.n_parts - 1];
	struct stat st;
	char name[16];
	manifest_part_name(raw->index, name);
	check("raw_part_is_last_hard_link",
	      raw->found == FOUND_RAW && fstatat(r.dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	          st.st_nlink == 2 && raw->size == (uint64_t)st.st_size && !strcmp(raw->path, "0"),
	      "%s", summary(&r));
	check_consistent("single_part_consistent", &r);
	run_free(&r);

	struct mime_limits lim = default_limits;
	lim.scan_raw = 0;
	const char *m = "From: a@example.org\n\nx\n";
	run_lim(&r, m, strlen(m), &lim);
	check("no_raw_part_without_scan_raw", r.rc == 0 && count_found(&r, FOUND_RAW) == 0, "%s",
	      summary(&r));
	run_free(&r);
}

static void t_multipart(void)
{
	struct run r;
	char msg[4096];
	snprintf(msg, sizeof msg,
	         "%sContent-Type: multipart/mixed; boundary=\"XyZ\"\n\n"
	         "This is the preamble.\n"
	         "--XyZ\nContent-Type: text/plain; charset=ISO-8859-1\n\nfirst\n"
	         "--XyZ\nContent-Type: Application/PDF; name=\"doc.pdf\"\n"
	         "Content-Transfer-Encoding: BASE64\n\n%s"
	         "--XyZ\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n"
	         "<p>caf=C3=A9 soft=\nbreak</p>\n"
	         "--XyZ--\nThe epilogue.\n",
	         HDR, "JVBERi0xLjQKJeLjz9MK\n");
	run_str(&r, msg);
	struct manifest_part *p1 = part_path(&r, "1"), *p2 = part_path(&r, "2"),
	                     *p3 = part_path(&r, "3");
	check("multipart_leaves", r.rc == 0 && count_found(&r, FOUND_LEAF) == 3 && p1 && p2 && p3,
	      "%s", summary(&r));
	check("multipart_text_leaf",
	      p1 && part_is_str(&r, p1, "first") && !strcmp(p1->charset, "iso-8859-1"), "%s",
	      summary(&r));
	check("base64_decoded_type_cte_filename",
	      p2 && part_is_str(&r, p2, "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n") &&
	          !strcmp(p2->type, "application/pdf") && !strcmp(p2->cte, "base64") &&
	          !strcmp(p2->filename, "doc.pdf"),
	      "%s", summary(&r));
	check("quoted_printable_decoded",
	      p3 && part_is_str(&r, p3, "<p>caf\xc3\xa9 softbreak</p>") &&
	          !strcmp(p3->cte, "quoted-printable"),
	      "%s", summary(&r));
	struct manifest_part *pre = part_n(&r, FOUND_PREAMBLE, 0),
	                     *epi = part_n(&r, FOUND_EPILOGUE, 0);
	check("preamble_part",
	      pre && !strcmp(pre->path, "0") && part_is_str(&r, pre, "This is the preamble."), "%s",
	      summary(&r));
	check("epilogue_part", epi && part_is_str(&r, epi, "The epilogue.\n"), "%s", summary(&r));
	check("raw_is_last", r.m.n_parts > 0 && r.m.parts[r.m.n_parts - 1].found == FOUND_RAW, "%s",
	      summary(&r));
	check_consistent("multipart_consistent", &r);
	run_free(&r);

	/* a preamble of whitespace only is no part */
	snprintf(msg, sizeof msg,
	         "%sContent-Type: multipart/mixed; boundary=b\n\n  \n\t\n--b\n\nx\n--b--\n\n \n",
	         HDR);
	run_str(&r, msg);
	check("whitespace_preamble_epilogue_skipped",
	      r.rc == 0 && count_found(&r, FOUND_PREAMBLE) == 0 &&
	          count_found(&r, FOUND_EPILOGUE) == 0 && count_found(&r, FOUND_LEAF) == 1,
	      "%s", summary(&r));
	run_free(&r);
}

static void t_nested_paths(void)
{
	struct run r;
	char msg[4096];
	snprintf(msg, sizeof msg,
	         "%sContent-Type: multipart/mixed; boundary=outer\n\n"
	         "--outer\nContent-Type: text/plain\n\none\n"
	         "--outer\nContent-Type: multipart/alternative; boundary=inner\n\n"
	         "--inner\nContent-Type: text/plain\n\ntwo-one\n"
	         "--inner\nContent-Type: text/html\n\ntwo-two\n"
	         "--inner--\n"
	         "--outer\nContent-Type: message/rfc822\n\n"
	         "From: x@example.org\nSubject: inner\n"
	         "Content-Type: multipart/mixed; boundary=deep\n\n"
	         "--deep\n\nthree-one\n--deep\nContent-Type: "
	         "application/octet-stream\n\nthree-two\n--deep--\n"
	         "--outer\nContent-Type: message/rfc822\n\nFrom: y@example.org\n\nfour-body\n"
	         "--outer--\n",
	         HDR);
	run_str(&r, msg);
	struct {
		const char *path, *body;
	} want[] = {{"1", "one"},         {"2.1", "two-one"},   {"2.2", "two-two"},
	            {"3.1", "three-one"}, {"3.2", "three-two"}, {"4.1", "four-body"}};
	int ok = r.rc == 0 && count_found(&r, FOUND_LEAF) == ARRAY_LEN(want);
	for (size_t i = 0; i < ARRAY_LEN(want) && ok; i++)
		ok = part_is_str(&r, part_path(&r, want[i].path), want[i].body);
	check("imap_section_paths", ok, "%s", summary(&r));
	check_consistent("nested_consistent", &r);
	run_free(&r);
}

static void t_encoded_rfc822(void)
{
	struct run r;
	const char *inner = "From: inner@example.org\nSubject: attached\n"
	                    "Content-Type: multipart/mixed; boundary=in\n\n"
	                    "--in\nContent-Type: text/plain\n\ninner text\n"
	                    "--in\nContent-Type: application/x-msdownload; name=evil.exe\n"
	                    "Content-Transfer-Encoding: base64\n\nTVqQAAMAAAA=\n--in--\n";
	char *enc = b64(inner, strlen(inner));
	struct buf msg;
	buf_init(&msg);
	buf_printf(
	    &msg,
	    "%sContent-Type: multipart/mixed; boundary=o\n\n--o\n\ncover\n"
	    "--o\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n%s--o--\n",
	    HDR, enc);
	run_lim(&r, msg.data, msg.len, &default_limits);
	struct manifest_part *a = part_path(&r, "2.1"), *b = part_path(&r, "2.2");
	check("base64_rfc822_recursion",
	      r.rc == 0 && part_is_str(&r, a, "inner text") &&
	          part_is(&r, b, "MZ\x90\0\x03\0\0\0", 8) && b && !strcmp(b->filename, "evil.exe"),
	      "%s", summary(&r));
	check_consistent("base64_rfc822_consistent", &r);
	run_free(&r);

	/* the encoded attached message that is no message is scanned as a leaf */
	buf_reset(&msg);
	char *junk = b64("\x01\x02 not a message", 17);
	buf_printf(
	    &msg,
	    "%sContent-Type: multipart/mixed; boundary=o\n\n"
	    "--o\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n%s--o--\n",
	    HDR, junk);
	run_lim(&r, msg.data, msg.len, &default_limits);
	check("encoded_rfc822_not_a_message_is_leaf",
	      r.rc == 0 && part_is(&r, part_path(&r, "1"), "\x01\x02 not a message", 17), "%s",
	      summary(&r));
	check_consistent("encoded_rfc822_leaf_consistent", &r);
	run_free(&r);

	/* depth bound for nested encoded messages */
	struct buf m2;
	buf_init(&m2);
	buf_addstr(&m2, "From: z@example.org\n\ncore\n");
	for (int i = 0; i < 12; i++) {
		char *e = b64(m2.data, m2.len);
		buf_reset(&m2);
		buf_printf(&m2,
		           "From: z@example.org\nContent-Type: message/rfc822\n"
		           "Content-Transfer-Encoding: base64\n\n%s",
		           e);
		free(e);
	}
	struct mime_limits lim = default_limits;
	lim.max_depth = 5;
	run_lim(&r, m2.data, m2.len, &lim);
	check("encoded_rfc822_depth_limit",
	      r.rc == 0 && has_unscannable(&r, "over limit (max_depth)") &&
	          count_found(&r, FOUND_LEAF) == 0,
	      "%s", summary(&r));
	run_free(&r);
	lim.max_depth = 20;
	run_lim(&r, m2.data, m2.len, &lim);
	check("encoded_rfc822_chain_within_depth",
	      r.rc == 0 && r.m.n_unscannable == 0 && count_found(&r, FOUND_LEAF) == 1 &&
	          part_is_str(&r, part_n(&r, FOUND_LEAF, 0), "core\n"),
	      "%s", summary(&r));
	run_free(&r);
	buf_free(&m2);
	free(enc);
	free(junk);
	buf_free(&msg);
}

static void t_embedded(void)
{
	unsigned char payload[300];
	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (unsigned char)(i * 7 + (i >> 3));
	payload[10] = 0x90; /* BinHex run marker as data */
	payload[11] = 0x90;
	struct buf msg;
	buf_init(&msg);
	buf_printf(&msg, "%sContent-Type: text/plain\n\nHere it comes:\n", HDR);
	uuencode(&msg, "virus.com", payload, sizeof payload);
	buf_addstr(&msg, "and in yEnc:\n");
	yencode(&msg, "pic.jpg", payload, sizeof payload);
	buf_addstr(&msg, "and BinHex:\n");
	binhex(&msg, "mac.app", payload, sizeof payload);
	buf_addstr(&msg, "bye\n");
	struct run r;
	run_lim(&r, msg.data, msg.len, &default_limits);
	struct manifest_part *uu = part_n(&r, FOUND_UUENCODE, 0), *ye = part_n(&r, FOUND_YENC, 0),
	                     *bh = part_n(&r, FOUND_BINHEX, 0);
	check("embedded_uuencode",
	      uu && part_is(&r, uu, payload, sizeof payload) &&
	          !strcmp(uu->filename, "virus.com") && !strcmp(uu->path, "1"),
	      "%s", summary(&r));
	check("embedded_yenc",
	      ye && part_is(&r, ye, payload, sizeof payload) && !strcmp(ye->filename, "pic.jpg"),
	      "%s", summary(&r));
	check("embedded_binhex",
	      bh && part_is(&r, bh, payload, sizeof payload) && !strcmp(bh->filename, "mac.app"),
	      "%s", summary(&r));
	check("embedded_text_leaf_kept", count_found(&r, FOUND_LEAF) == 1, "%s", summary(&r));
	check_consistent("embedded_consistent", &r);
	run_free(&r);

	/* uuencode inside a base64-encoded text part, CRLF line ends */
	struct buf t;
	buf_init(&t);
	buf_addstr(&t, "see attached\r\n");
	uuencode(&t, "x.bin", payload, 100);
	struct buf crlf;
	buf_init(&crlf);
	for (size_t i = 0; i < t.len; i++) {
		if (t.data[i] == '\n' && (i == 0 || t.data[i - 1] != '\r'))
			buf_add(&crlf, "\r", 1);
		buf_add(&crlf, &t.data[i], 1);
	}
	char *e = b64(crlf.data, crlf.len);
	buf_reset(&msg);
	buf_printf(&msg, "%sContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n%s", HDR,
	           e);
	run_lim(&r, msg.data, msg.len, &default_limits);
	uu = part_n(&r, FOUND_UUENCODE, 0);
	check("embedded_uuencode_in_base64_crlf", uu && part_is(&r, uu, payload, 100), "%s",
	      summary(&r));
	run_free(&r);
	free(e);
	buf_free(&t);
	buf_free(&crlf);

	/* uuencode in a preamble too; not in an application/octet-stream leaf */
	buf_reset(&msg);
	buf_printf(&msg, "%sContent-Type: multipart/mixed; boundary=b\n\n", HDR);
	uuencode(&msg, "pre.bin", payload, 50);
	buf_addstr(&msg, "--b\nContent-Type: application/octet-stream\n\n");
	uuencode(&msg, "no.bin", payload, 50);
	buf_addstr(&msg, "--b--\n");
	run_lim(&r, msg.data, msg.len, &default_limits);
	uu = part_n(&r, FOUND_UUENCODE, 0);
	check("embedded_uuencode_in_preamble_only",
	      count_found(&r, FOUND_UUENCODE) == 1 && uu && !strcmp(uu->filename, "pre.bin") &&
	          part_is(&r, uu, payload, 50),
	      "%s", summary(&r));
	run_free(&r);
	buf_free(&msg);
}

static void t_broken(void)
{
	struct run r;
	char msg[4096];

	snprintf(msg, sizeof msg,
	         "%sContent-Type: multipart/mixed; boundary=b\n\n--b\n\nfirst\n--b\n"
	         "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
	         "SGVsbG8gd29ybGQ=\n",
	         HDR);
	run_str(&r, msg);
	check("missing_final_boundary",
	      r.rc == 0 && part_is_str(&r, part_path(&r, "1"), "first") &&
	          part_is_str(&r, part_path(&r, "2"), "Hello world"),
	      "%s", summary(&r));
	run_free(&r);

	/* no start boundary at all: the body is kept (as the preamble) and scanned */
	snprintf(msg, sizeof msg,
	         "%sContent-Type: multipart/mixed; boundary=nothere\n\n"
	         "Content-Type: text/plain\n\nbody without any boundary\n",
	         HDR);
	run_str(&r, msg);
	struct manifest_part *pre = part_n(&r, FOUND_PREAMBLE, 0);
	check("missing_start_boundary",
	      r.rc == 0 && pre &&
	          part_is_str(&r, pre, "Content-Type: text/plain\n\nbody without any boundary\n"),
	      "%s", summary(&r));
	run_free(&r);

	/* multipart without a boundary parameter: same */
	snprintf(msg, sizeof msg, "%sContent-Type: multipart/mixed\n\nall of it\n", HDR);
	run_str(&r, msg);
	pre = part_n(&r, FOUND_PREAMBLE, 0);
	check("multipart_without_boundary", r.rc == 0 && pre && part_is_str(&r, pre, "all of it\n"),
	      "%s", summary(&r));
	run_free(&r);

	/* duplicate Content-Type: GMime reads the last one, others the first: both readings
	 * are extracted */
	snprintf(
	    msg, sizeof msg,
	    "%sContent-Type: multipart/mixed; boundary=b\nContent-Type: text/plain\n\n"
	    "--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
	    "SGlkZGVu\n--b--\n",
	    HDR);
	run_str(&r, msg);
	int hidden = 0;
	for (unsigned i = 0; i < count_found(&r, FOUND_LEAF); i++)
		hidden |= part_is_str(&r, part_n(&r, FOUND_LEAF, i), "Hidden");
	check("duplicate_content_type_both_readings",
	      r.rc == 0 && count_found(&r, FOUND_LEAF) == 2 && hidden, "%s", summary(&r));
	check_consistent("duplicate_content_type_consistent", &r);
	run_free(&r);

	/* the reverse order: GMime's reading is the multipart, nothing more to extract */
	snprintf(msg, sizeof msg,
	         "%sContent-Type: text/plain\nContent-Type: multipart/mixed; boundary=b\n\n"
	         "--b\n\nx\n--b--\n",
	         HDR);
	run_str(&r, msg);
	check("duplicate_content_type_reverse",
	      r.rc == 0 && count_found(&r, FOUND_LEAF) == 1 &&
	          part_is_str(&r, part_path(&r, "1"), "x"),
	      "%s", summary(&r));
	run_free(&r);

	/* conflicting transfer encodings: decoded both ways */
	snprintf(msg, sizeof msg,
	         "%sContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
	         "Content-Transfer-Encoding: 7bit\n\nSGlkZGVu\n",
	         HDR);
	run_str(&r, msg);
	hidden = 0;
	for (unsigned i = 0; i < count_found(&r, FOUND_LEAF); i++)
		hidden |= part_is_str(&r, part_n(&r, FOUND_LEAF, i), "Hidden");
	check("duplicate_transfer_encoding_both_readings",
	      r.rc == 0 && count_found(&r, FOUND_LEAF) == 2 && hidden, "%s", summary(&r));
	run_free(&r);

	/* many conflicting headers: bounded, and marked */
	struct buf many;
	buf_init(&many);
	buf_printf(&many, "%s", HDR);
	for (int i = 0; i < 40; i++)
		buf_printf(&many, "Content-Type: multipart/mixed; boundary=b%d\n", i);
	buf_addstr(&many, "Content-Type: text/plain\n\n--b1\n\nx\n--b1--\n");
	run_lim(&r, many.data, many.len, &default_limits);
	check("conflicting_headers_bounded",
	      r.rc == 0 &&
	          has_unscannable(&r, "ambiguous structure (too many conflicting headers)"),
	      "%s", summary(&r));
	run_free(&r);
	buf_free(&many);

	/* dirty base64: junk characters are skipped */
	snprintf(msg, sizeof msg,
	         "%sContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
	         "SGVs!!bG8g\n** junk **\nd29y\tbGQ=\n",
	         HDR);
	run_str(&r, msg);
	struct buf b;
	buf_init(&b);
	struct manifest_part *p = part_path(&r, "1");
	int ok = r.rc == 0 && p && read_part(&r, p, &b) == 0 && b.len >= 5 &&
	         memcmp(b.data, "Hello", 5) == 0;
	check("dirty_base64", ok, "%s", summary(&r));
	run_free(&r);

	/* a part that ends inside its headers */
	snprintf(
	    msg, sizeof msg,
	    "%sContent-Type: multipart/mixed; boundary=b\n\n--b\n\nok\n--b\nContent-Type: text/pl",
	    HDR);
	run_str(&r, msg);
	check("part_ends_inside_headers", r.rc == 0 && part_is_str(&r, part_path(&r, "1"), "ok"),
	      "%s", summary(&r));
	check_consistent("part_ends_inside_headers_consistent", &r);
	run_free(&r);

	/* CRLF, LF and mixed line ends give the same leaves (modulo the line ends) */
	const char *lf =
	    "From: a@example.org\nContent-Type: multipart/mixed; boundary=q\n\n"
	    "--q\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
	    "AAECAwQFBgc=\n--q\n\ntext\n--q--\n";
	char crlf[1024], mixed[1024];
	size_t o = 0, om = 0;
	for (const char *s = lf; *s; s++) {
		if (*s == '\n') {
			crlf[o++] = '\r';
			if ((om & 1) == 0)
				mixed[om++] = '\r';
		}
		crlf[o++] = *s;
		mixed[om++] = *s;
	}
	const char *variants[] = {lf, crlf, mixed};
	size_t lens[] = {strlen(lf), o, om};
	const char *names[] = {"line_ends_lf", "line_ends_crlf", "line_ends_mixed"};
	for (int v = 0; v < 3; v++) {
		run_lim(&r, variants[v], lens[v], &default_limits);
		struct manifest_part *b1 = part_path(&r, "1"), *t2 = part_path(&r, "2");
		buf_reset(&b);
		int good = r.rc == 0 && part_is(&r, b1, "\0\1\2\3\4\5\6\7", 8) && t2 &&
		           read_part(&r, t2, &b) == 0 && b.len >= 4 &&
		           memcmp(b.data, "text", 4) == 0;
		check(names[v], good, "%s", summary(&r));
		run_free(&r);
	}

	/* 8-bit bytes and NUL in headers */
	static const char h8[] = "From: \xff\xfe <a@example.org>\nSubject: caf\xe9 \0 nul\n"
	                         "Content-Type: text/plain; name=\"\xe9t\xe9\0.txt\"\n"
	                         "X-\x80\x81: \x01\x02\n\nbody\n";
	run_lim(&r, h8, sizeof h8 - 1, &default_limits);
	check("eight_bit_and_nul_in_headers",
	      r.rc == 0 && part_is_str(&r, part_path(&r, "1"), "body\n"), "%s", summary(&r));
	check_consistent("eight_bit_consistent", &r);
	run_free(&r);

	/* a header block line GMime cannot read (no colon, longer than its buffer): the
	 * rest of the message is still parsed, the line starting a body */
	{
		struct buf lj;
		buf_init(&lj);
		buf_printf(&lj,
		           "%sContent-Type: multipart/mixed; boundary=b\n\n--b\n\nfirst\n"
		           "--b\nContent-Type: "
		           "application/octet-stream\nContent-Transfer-Encoding: base64\n",
		           HDR);
		for (int i = 0; i < 1500; i++)
			buf_addstr(&lj, "QUFB");
		buf_addstr(&lj, "\n\n--b\n\nlast\n--b--\n");
		run_lim(&r, lj.data, lj.len, &default_limits);
		struct manifest_part *bin = part_path(&r, "2");
		check("long_junk_line_in_part_header",
		      r.rc == 0 && bin && bin->size == 4500 &&
		          part_is_str(&r, part_path(&r, "3"), "last") && r.m.n_unscannable == 0,
		      "%s", summary(&r));
		check_consistent("long_junk_line_consistent", &r);
		run_free(&r);
		buf_free(&lj);
	}

	/* no blank line between a part's headers and its base64 body: GMime drops the body
	 * as bad header lines; the second reading makes it the body and decodes it */
	snprintf(msg, sizeof msg,
	         "%sContent-Type: multipart/mixed; boundary=b\n\n--b\n\ncover\n"
	         "--b\nContent-Type: application/x-msdownload; name=x.exe\n"
	         "Content-Transfer-Encoding: base64\nTVqQAAMAAAAEAAAA\n--b--\n",
	         HDR);
	run_str(&r, msg);
	hidden = 0;
	for (unsigned i = 0; i < count_found(&r, FOUND_LEAF); i++)
		hidden |= part_is(&r, part_n(&r, FOUND_LEAF, i), "MZ\x90\0\3\0\0\0\4\0\0\0", 12);
	check("body_without_blank_line", r.rc == 0 && hidden, "%s", summary(&r));
	check_consistent("body_without_blank_line_consistent", &r);
	run_free(&r);

	/* junk before the first header: skipped, not badmail */
	run_str(&r, "     \nFrom: a@example.org\nTo: b@example.org\n\nafter junk\n");
	check("junk_before_headers",
	      r.rc == 0 && part_is_str(&r, part_path(&r, "1"), "after junk\n"), "%s", summary(&r));
	run_free(&r);

	/* not a message at all */
	run_lim(&r, "", 0, &default_limits);
	check("empty_file_not_a_message", r.rc == 1 && r.reason[0], "%s", summary(&r));
	run_free(&r);
	run_str(&r, "this line is no header\nnor this\n");
	check("no_header_not_a_message", r.rc == 1 && r.reason[0] && r.m.n_parts == 0, "%s",
	      summary(&r));
	run_free(&r);

	/* headers only, no body */
	run_str(&r, "From: a@example.org\nTo: b@example.org\n");
	check("headers_only", r.rc == 0 && part_path(&r, "1") && part_path(&r, "1")->size == 0,
	      "%s", summary(&r));
	run_free(&r);
	buf_free(&b);
}

static void t_filenames(void)
{
	struct run r;
	char msg[4096];
	snprintf(msg, sizeof msg,
	         "%sContent-Type: multipart/mixed; boundary=b\n\n"
	         "--b\nContent-Disposition: attachment; filename=\"../../etc/passwd\"\n\none\n"
	         "--b\nContent-Type: application/octet-stream; name=\"/\"\n\ntwo\n"
	         "--b\nContent-Disposition: attachment; filename=\"a\nb\"\n\nthree\n"
	         "--b\nContent-Disposition: attachment;\n "
	         "filename*=utf-8''..%%2F..%%2Fx%%0Ay%%C3%%A9.exe\n\nfour\n"
	         "--b\nContent-Disposition: attachment; "
	         "filename=\"=?utf-8?B?Li4vZXZpbC5leGU=?=\"\n\nfive\n"
	         "--b\nContent-Disposition: attachment; filename=\"0001.ATT\"\n\nsix\n"
	         "--b--\n",
	         HDR);
	run_str(&r, msg);
	struct manifest_part *p[6];
	for (int i = 0; i < 6; i++) {
		char path[16];
		snprintf(path, sizeof path, "%d", i + 1);
		p[i] = part_path(&r, path);
	}
	check("filename_traversal_recorded",
	      r.rc == 0 && p[0] && !strcmp(p[0]->filename, "../../etc/passwd") && p[1] &&
	          !strcmp(p[1]->filename, "/"),
	      "%s", summary(&r));
	check("filename_rfc2231_decoded", p[3] && !strcmp(p[3]->filename, "../../x\ny\xc3\xa9.exe"),
	      "%s", p[3] ? p[3]->filename : summary(&r));
	check("filename_rfc2047_decoded", p[4] && !strcmp(p[4]->filename, "../evil.exe"), "%s",
	      p[4] ? p[4]->filename : summary(&r));
	check("filename_newline_no_path", p[2] && strchr(p[2]->filename, 'a') != NULL, "%s",
	      summary(&r));
	check("filenames_never_paths",
	      p[5] && part_is_str(&r, p[0], "one") && part_is_str(&r, p[5], "six"), "%s",
	      summary(&r));
	check_consistent("filenames_only_att_files", &r);
	struct stat st;
	check("no_file_outside_dir",
	      fstatat(r.dirfd, "../etc", &st, 0) < 0 &&
	          fstatat(r.dirfd, "../../etc/passwd.ATT", &st, 0) < 0,
	      "a file appeared outside the work directory");
	run_free(&r);
}

static void t_limits(void)
{
	struct run r;
	struct buf msg;
	buf_init(&msg);
	buf_printf(&msg, "%sContent-Type: multipart/mixed; boundary=b\n\n", HDR);
	for (int i = 0; i < 50; i++)
		buf_printf(&msg, "--b\nContent-Type: text/plain\n\npart %d\n", i);
	buf_addstr(&msg, "--b--\n");
	struct mime_limits lim = default_limits;
	lim.max_parts = 10;
	run_lim(&r, msg.data, msg.len, &lim);
	check("limit_max_parts",
	      r.rc == 0 && r.m.n_parts == 10 && has_unscannable(&r, "over limit (max_parts)") &&
	          r.m.parts[9].found == FOUND_RAW,
	      "%s", summary(&r));
	check_consistent("limit_max_parts_consistent", &r);
	run_free(&r);

	/* max_total_size reached inside an embedded uuencode block (found by the fuzzer): the
	 * cut-short embedded part keeps a manifest entry that matches its file */
	{
		static unsigned char big[40000];
		for (size_t i = 0; i < sizeof big; i++)
			big[i] = (unsigned char)(i * 7 + 3);
		buf_reset(&msg);
		buf_printf(&msg, "%sContent-Type: text/plain\n\nsee below\n", HDR);
		uuencode(&msg, "blob.bin", big, sizeof big);
		/* the limit falls at every point of the leaf and of the embedded part */
		int all_ok = 1;
		char why[256] = "";
		for (uint64_t t = 20000; t <= 110000; t += 2500) {
			lim = default_limits;
			lim.max_total_size = t;
			run_lim(&r, msg.data, msg.len, &lim);
			const char *bad = dir_consistent(&r, why, sizeof why);
			if (r.rc != 0 || bad) {
				all_ok = 0;
				snprintf(why, sizeof why, "max_total_size=%llu: %s",
				         (unsigned long long)t, bad ? bad : summary(&r));
			}
			run_free(&r);
			if (!all_ok)
				break;
		}
		check("limit_total_inside_uuencode_consistent", all_ok, "%s", why);
	}

	/* max_part_size: truncated while writing, marked */
	buf_reset(&msg);
	buf_printf(&msg, "%sContent-Type: multipart/mixed; boundary=b\n\n--b\n\n", HDR);
	for (int i = 0; i < 100; i++)
		buf_addstr(&msg, "0123456789012345678901234567890123456789\n");
	buf_addstr(&msg, "--b\n\nsmall\n--b--\n");
	lim = default_limits;
	lim.max_part_size = 1000;
	run_lim(&r, msg.data, msg.len, &lim);
	struct manifest_part *p1 = part_path(&r, "1");
	check("limit_max_part_size",
	      r.rc == 0 && p1 && p1->size == 1000 &&
	          has_unscannable(&r, "over limit (max_part_size)") &&
	          part_is_str(&r, part_path(&r, "2"), "small"),
	      "%s", summary(&r));
	check_consistent("limit_max_part_size_consistent", &r);
	run_free(&r);

	/* max_total_size: stops all writing, marked; the raw part stays */
	lim = default_limits;
	lim.max_total_size = 1500;
	run_lim(&r, msg.data, msg.len, &lim);
	uint64_t total = 0;
	for (size_t i = 0; i < r.m.n_parts; i++)
		if (r.m.parts[i].found != FOUND_RAW)
			total += r.m.parts[i].size;
	check("limit_max_total_size",
	      r.rc == 0 && total <= 1500 && has_unscannable(&r, "over limit (max_total_size)") &&
	          count_found(&r, FOUND_RAW) == 1,
	      "%s", summary(&r));
	check_consistent("limit_max_total_size_consistent", &r);
	run_free(&r);

	/* max_message_size: not parsed, marked, raw part only */
	lim = default_limits;
	lim.max_message_size = 100;
	run_lim(&r, msg.data, msg.len, &lim);
	check("limit_max_message_size",
	      r.rc == 0 && has_unscannable(&r, "over limit (max_message_size)") &&
	          r.m.n_parts == 1 && r.m.parts[0].found == FOUND_RAW,
	      "%s", summary(&r));
	run_free(&r);

	/* max_depth with nested multiparts */
	buf_reset(&msg);
	buf_printf(&msg, "%s", HDR);
	for (int i = 0; i < 8; i++)
		buf_printf(&msg, "Content-Type: multipart/mixed; boundary=l%d\n\n--l%d\n", i, i);
	buf_addstr(&msg, "\ndeep\n");
	lim = default_limits;
	lim.max_depth = 4;
	run_lim(&r, msg.data, msg.len, &lim);
	check("limit_max_depth",
	      r.rc == 0 && has_unscannable(&r, "over limit (max_depth)") &&
	          count_found(&r, FOUND_LEAF) == 0,
	      "%s", summary(&r));
	run_free(&r);
	lim.max_depth = 8;
	run_lim(&r, msg.data, msg.len, &lim);
	check("depth_within_limit",
	      r.rc == 0 && r.m.n_unscannable == 0 &&
	          part_is_str(&r, part_path(&r, "1.1.1.1.1.1.1.1"), "deep\n"),
	      "%s", summary(&r));
	run_free(&r);

	/* max_parts counts embedded parts too */
	buf_reset(&msg);
	buf_printf(&msg, "%s\n", HDR);
	for (int i = 0; i < 20; i++)
		buf_addstr(&msg, "begin 644 f\n#86)C\n`\nend\n");
	lim = default_limits;
	lim.max_parts = 5;
	run_lim(&r, msg.data, msg.len, &lim);
	check("limit_max_parts_embedded",
	      r.rc == 0 && r.m.n_parts == 5 && has_unscannable(&r, "over limit (max_parts)"), "%s",
	      summary(&r));
	check_consistent("limit_max_parts_embedded_consistent", &r);
	run_free(&r);
	buf_free(&msg);
}

static void t_hostile(void)
{
	struct run r;
	struct buf msg;
	buf_init(&msg);

	/* a huge header (folded) and a huge single-line header */
	buf_printf(&msg, "%sX-Huge: start\n", HDR);
	for (int i = 0; i < 40000; i++)
		buf_addstr(&msg, " 0123456789012345678901234567890123456789\n");
	buf_addstr(&msg, "Content-Type: text/plain\n\nafter\n");
	run_lim(&r, msg.data, msg.len, &default_limits);
	check("huge_folded_header",
	      r.rc == 0 && has_unscannable(&r, "over limit (max_header_size)") &&
	          count_found(&r, FOUND_RAW) == 1,
	      "%s", summary(&r));
	check_consistent("huge_folded_header_consistent", &r);
	run_free(&r);
	buf_reset(&msg);
	buf_addstr(&msg, "X-Huge: ");
	for (int i = 0; i < 200000; i++)
		buf_addstr(&msg, "0123456789");
	buf_addstr(&msg, "\nFrom: a@example.org\n\nbody\n");
	run_lim(&r, msg.data, msg.len, &default_limits);
	check("huge_first_header", r.rc == 0 && has_unscannable(&r, "over limit (max_header_size)"),
	      "%s", summary(&r));
	run_free(&r);
	/* a large header below the limit is fine */
	buf_reset(&msg);
	buf_printf(&msg, "%sX-Large: ", HDR);
	for (int i = 0; i < 20000; i++)
		buf_addstr(&msg, "0123456789");
	buf_addstr(&msg, "\n\nbody\n");
	run_lim(&r, msg.data, msg.len, &default_limits);
	check("large_header_ok",
	      r.rc == 0 && r.m.n_unscannable == 0 && part_is_str(&r, part_path(&r, "1"), "body\n"),
	      "%s", summary(&r));
	run_free(&r);

	/* a 7,000-character boundary */
	char *bnd = xmalloc(7001);
	for (int i = 0; i < 7000; i++)
		bnd[i] = (char)('a' + i % 26);
	bnd[7000] = '\0';
	buf_reset(&msg);
	buf_printf(&msg,
	           "%sContent-Type: multipart/mixed; boundary=\"%s\"\n\n--%s\n\nlong-one\n--%s\n"
	           "Content-Type: application/octet-stream\n\nlong-two\n--%s--\n",
	           HDR, bnd, bnd, bnd, bnd);
	run_lim(&r, msg.data, msg.len, &default_limits);
	check("boundary_7000_chars",
	      r.rc == 0 && part_is_str(&r, part_path(&r, "1"), "long-one") &&
	          part_is_str(&r, part_path(&r, "2"), "long-two") &&
	          count_found(&r, FOUND_PREAMBLE) == 0,
	      "%s", summary(&r));
	check_consistent("boundary_7000_consistent", &r);
	run_free(&r);
	free(bnd);

	/* 100 levels of nesting, multipart and message/rfc822 alternating */
	buf_reset(&msg);
	buf_printf(&msg, "%s", HDR);
	for (int i = 0; i < 100; i++) {
		if (i % 2)
			buf_addstr(&msg, "Content-Type: message/rfc822\n\nFrom: n@example.org\n");
		else
			buf_printf(&msg, "Content-Type: multipart/mixed; boundary=n%d\n\n--n%d\n",
			           i, i);
	}
	buf_addstr(&msg, "\ninnermost\n");
	run_lim(&r, msg.data, msg.len, &default_limits);
	check("nesting_100_levels", r.rc == 0 && has_unscannable(&r, "over limit (max_depth)"),
	      "%s", summary(&r));
	check_consistent("nesting_100_consistent", &r);
	run_free(&r);
	struct mime_limits lim = default_limits;
	lim.max_depth = 200;
	run_lim(&r, msg.data, msg.len, &lim);
	check("nesting_100_levels_allowed",
	      r.rc == 0 && r.m.n_unscannable == 0 && count_found(&r, FOUND_LEAF) == 1, "%s",
	      summary(&r));
	run_free(&r);

	/* thousands of parts: bounded by max_parts, and GMime's tree by the budget */
	buf_reset(&msg);
	buf_printf(&msg, "%sContent-Type: multipart/mixed; boundary=b\n\n", HDR);
	for (int i = 0; i < 50000; i++)
		buf_addstr(&msg, "--b\n\nx\n");
	buf_addstr(&msg, "--b--\n");
	run_lim(&r, msg.data, msg.len, &default_limits);
	check("thousands_of_parts",
	      r.rc == 0 && r.m.n_parts == default_limits.max_parts &&
	          has_unscannable(&r, "over limit (max_parts)"),
	      "%s", r.rc == 0 ? "wrong count" : r.reason);
	check_consistent("thousands_of_parts_consistent", &r);
	run_free(&r);

	/* many encapsulated messages (each a message/ line): also within the budget */
	buf_reset(&msg);
	buf_printf(&msg, "%sContent-Type: multipart/digest; boundary=d\n\n", HDR);
	for (int i = 0; i < 5000; i++)
		buf_addstr(&msg, "--d\n\nContent-Type: message/rfc822\n\nx\n");
	buf_addstr(&msg, "--d--\n");
	lim = default_limits;
	lim.max_parts = 100;
	run_lim(&r, msg.data, msg.len, &lim);
	check("many_encapsulated_messages",
	      r.rc == 0 && r.m.n_parts <= 100 && has_unscannable(&r, "over limit (max_parts)"),
	      "%s", r.reason);
	run_free(&r);

	/* a second run into the same directory fails with EEXIST: I/O error, not badmail */
	const char *m = "From: a@example.org\n\nx\n";
	run_lim(&r, m, strlen(m), &default_limits);
	struct manifest m2;
	manifest_init(&m2);
	char reason[256] = "";
	int fd = openat(r.dirfd, "message", O_RDONLY | O_CLOEXEC);
	int rc = mime_extract(fd, "message", r.dirfd, &default_limits, &m2, reason, sizeof reason);
	int e = errno;
	close(fd);
	check("existing_part_file_is_io_error", rc == -1 && e == EEXIST && reason[0],
	      "rc=%d errno=%d %s", rc, e, reason);
	manifest_free(&m2);
	run_free(&r);
	buf_free(&msg);
}

static int env_run(const char *msg, struct envelope *env, char *reason, size_t rlen)
{
	char path[300];
	snprintf(path, sizeof path, "%s/env%03d", base, ++case_no);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || write_all(fd, msg, strlen(msg)) < 0) {
		perror(path);
		exit(2);
	}
	envelope_init(env);
	int rc = mime_envelope_from_headers(fd, env, reason, rlen);
	close(fd);
	return rc;
}

static void t_envelope(void)
{
	struct envelope env;
	char reason[256];
	int rc = env_run("Return-Path: <bounce@example.org>\nFrom: \"Al\" <al@example.org>\n"
	                 "To: \"Bob B.\" <bob@example.net>, carol@example.net\n"
	                 "Cc: undisclosed: ;, team: dave@example.com, \"Eve\" <eve@example.com>;\n"
	                 "To: bob@example.net\nSubject: x\n\nbody To: nobody@example.org\n",
	                 &env, reason, sizeof reason);
	int ok = rc == 0 && !strcmp(env.sender, "bounce@example.org") && env.n_rcpts == 4;
	const char *want[] = {"bob@example.net", "carol@example.net", "dave@example.com",
	                      "eve@example.com"};
	for (size_t i = 0; ok && i < ARRAY_LEN(want); i++) {
		int found = 0;
		for (size_t j = 0; j < env.n_rcpts; j++)
			found |= !strcmp(env.rcpts[j], want[i]);
		ok = found;
	}
	check("envelope_return_path_to_cc_groups", ok, "rc=%d sender=%s n=%zu %s", rc,
	      rc == 0 ? env.sender : "", rc == 0 ? env.n_rcpts : 0, rc ? reason : "");
	envelope_free(&env);

	rc = env_run("From: Al <al@example.org>, other@example.org\nCc: x@example.net\n\nb\n", &env,
	             reason, sizeof reason);
	check("envelope_from_fallback",
	      rc == 0 && !strcmp(env.sender, "al@example.org") && env.n_rcpts == 1 &&
	          !strcmp(env.rcpts[0], "x@example.net"),
	      "rc=%d %s", rc, rc ? reason : env.sender);
	envelope_free(&env);

	rc = env_run("Return-Path: <>\nFrom: a@example.org\nTo: b@example.org\n\n", &env, reason,
	             sizeof reason);
	check("envelope_null_sender", rc == 0 && !strcmp(env.sender, ""), "rc=%d %s", rc,
	      rc ? reason : env.sender);
	envelope_free(&env);

	rc = env_run("From: a@example.org\nSubject: none\n\nTo: b@example.org\n", &env, reason,
	             sizeof reason);
	check("envelope_no_recipient", rc == -1 && reason[0] && env.rcpts == NULL, "rc=%d", rc);
	envelope_free(&env);
}

/* A leaf whose decoded bytes are s, anywhere in the manifest? */
static int has_leaf_str(struct run *r, const char *s)
{
	for (size_t i = 0; i < r->m.n_parts; i++)
		if (r->m.parts[i].found == FOUND_LEAF && part_is_str(r, &r->m.parts[i], s))
			return 1;
	return 0;
}

/* Readings other mail readers make and GMime does not (docs/CONFORMANCE.md, "Parser
 * differentials"): extracted where cheap, else marked. "UEFZTE9BRA==" is "PAYLOAD". */
static void t_differentials(void)
{
	struct run r;
	run_str(&r, "Content-Type: multipart/mixed; boundary=\"B\"\n\n--B\nContent-Type: "
	            "text/plain\n\nhi\n--B--\nepilogue\n--B\nContent-Transfer-Encoding: "
	            "base64\n\nUEFZTE9BRA==\n--B--\n");
	check("differential_epilogue_parts_after_close",
	      r.rc == 0 && has_leaf_str(&r, "PAYLOAD") && r.m.n_unscannable == 0, "%s",
	      summary(&r));
	check_consistent("differential_epilogue_consistent", &r);
	run_free(&r);

	run_str(&r, "Content-Type: multipart/mixed; boundary=\"B\"\n\npre\n--Bjunk\n"
	            "Content-Transfer-Encoding: base64\n\nUEFZTE9BRA==\n--B\n\nhi\n--B--\n");
	check("differential_preamble_prefix_delimiter",
	      r.rc == 0 && has_leaf_str(&r, "PAYLOAD") && r.m.n_unscannable == 0, "%s",
	      summary(&r));
	run_free(&r);

	/* base64 of "--E\nContent-Transfer-Encoding: base64\n\nUEFZTE9BRA==\n--E--\n" */
	run_str(&r, "Content-Type: multipart/mixed; boundary=\"E\"\nContent-Transfer-Encoding: "
	            "base64\n\nLS1FCkNvbnRlbnQtVHJhbnNmZXItRW5jb2Rpbmc6IGJhc2U2NAoKVUVGWlRF"
	            "OUJSQT09Ci0tRS0tCg==\n");
	check("differential_base64_multipart_decoded",
	      r.rc == 0 && has_leaf_str(&r, "PAYLOAD") && r.m.n_unscannable == 0, "%s",
	      summary(&r));
	check_consistent("differential_base64_multipart_consistent", &r);
	run_free(&r);

	run_str(&r, "Content-Type: multipart/mixed; foo=\"z;boundary=Q\"; boundary=X\n\n--Q\n\n"
	            "q\n--Q--\n--X\n\nx\n--X--\n");
	check("differential_quoted_boundary_marked",
	      r.rc == 0 &&
	          has_unscannable(&r, "ambiguous structure (conflicting boundary parameters)"),
	      "%s", summary(&r));
	run_free(&r);

	/* the same value twice, and a boundary folded over two lines, are one reading */
	run_str(&r, "Content-Type: multipart/mixed; boundary=\"a\n b\"; boundary=\"a b\"\n\n"
	            "--a b\n\nx\n--a b--\n");
	check("differential_same_boundary_not_marked",
	      r.rc == 0 && r.m.n_unscannable == 0 && has_leaf_str(&r, "x"), "%s", summary(&r));
	run_free(&r);

	run_str(&r, "Content-Type: multipart/mixed; boundary=A\nContent-Type: multipart/mixed; "
	            "boundary=B\n\n--A\n\na\n--A--\n--B\n\nb\n--B--\n");
	check("differential_two_multipart_types_marked",
	      r.rc == 0 && has_unscannable(&r, "ambiguous structure (conflicting Content-Type "
	                                       "headers on a multipart)"),
	      "%s", summary(&r));
	run_free(&r);

	/* other names: the same file listed under each, hard-linked */
	run_str(&r, "Content-Type: application/octet-stream; name=\"a.pdf\"\n"
	            "Content-Disposition: attachment; filename=\"b.pdf\"; filename=\"c.exe\"\n\n"
	            "data\n");
	int names = 0;
	for (size_t i = 0; i < r.m.n_parts; i++)
		if (r.m.parts[i].found == FOUND_LEAF && part_is_str(&r, &r.m.parts[i], "data\n") &&
		    (!strcmp(r.m.parts[i].filename, "a.pdf") ||
		     !strcmp(r.m.parts[i].filename, "b.pdf") ||
		     !strcmp(r.m.parts[i].filename, "c.exe")))
			names++;
	check("differential_every_name_listed", r.rc == 0 && names == 3, "%s", summary(&r));
	check_consistent("differential_names_consistent", &r);
	run_free(&r);
}

static void rm_rf(const char *path)
{
	int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	remove_tree_at(fd, path);
	close(fd);
}

int main(void)
{
	snprintf(base, sizeof base, "%s/test_mime.XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(base) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	mime_init();
	t_single_part();
	t_multipart();
	t_nested_paths();
	t_encoded_rfc822();
	t_embedded();
	t_broken();
	t_filenames();
	t_limits();
	t_hostile();
	t_differentials();
	t_envelope();
	check("memory_and_file_parses_agree", twins > 50 && twins_differ == 0,
	      "%u of %u messages differ (first: %s, against %s.f)", twins_differ, twins, twin_first,
	      twin_first);
	if (getenv("TEST_KEEP_TMP"))
		printf("    kept %s\n", base);
	else
		rm_rf(base + 1);
	printf("%d passed, %d failed\n", checks - failures, failures);
	return failures ? 1 : 0;
}
