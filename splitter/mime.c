/*
 * mime - hostile-proof MIME extraction; the contract is in mime.h.
 *
 * How one message is split:
 *
 *  1. A message of at most lim->mem_max bytes (1 MiB in the splitter) is read whole
 *     into memory with one pread; a larger one stays in the file.
 *     mime_prescan reads it once (from memory, or 64 KiB at a time): it computes the
 *     sha256 of the raw part and counts the lines that can start a MIME object in
 *     GMime (boundary-like "--" lines, lines naming a message/ type). Where that count
 *     passes the object budget, or where a header-like run of lines passes
 *     MIME_RUN_MAX, the parse is cut: GMime sees only the file up to there. This bounds
 *     the memory of GMime's object tree, which GMime builds whole before we walk it,
 *     whatever max_parts says, and of the header fields that GMime keeps whole.
 *  2. GMime parses from a window on the bytes in memory, or from a GMimeStreamFs over a
 *     dup of the descriptor, with persist_stream so that every part's content stays a
 *     (start, end) window on the message, not a copy. Both readings give the same parts
 *     (the unit tests and the fuzz target check every input both ways).
 *  3. mime_walk visits the tree depth-first; each leaf is decoded through a
 *     GMimeStreamFilter (the transfer encoding) straight into its NNNN.ATT, up to 64 KiB
 *     per write, hashing while writing; the decoded text of text parts also feeds the
 *     embedded-payload scanner (uuencode, yEnc, BinHex), which opens parts of its own as
 *     it finds them.
 *  4. An attached message that GMime left encoded (message/rfc822 with base64,
 *     quoted-printable or uuencode) is decoded into an unnamed temporary file in the
 *     work directory and parsed from there, recursively (bounded by max_depth).
 *  5. Readings GMime does not make but other mail readers do (so a sender could hide a
 *     part from GMime's): the other Content-Type / Content-Transfer-Encoding of a leaf
 *     with conflicting headers (mime_alternatives), the body that GMime dropped as bad
 *     header lines (mime_junk_reading), the rest of a message after a line GMime gave up
 *     on (mime_parse), junk before the first header (mime_first_header), parts behind a
 *     boundary too long for GMime (mime_split_long), delimiter-like lines in a preamble
 *     or epilogue (mime_other_delimiters), a transfer-encoded multipart decoded
 *     (mime_encoded_multipart), other names and types of a leaf (mime_other_names, as
 *     hard links); readings it cannot make are marked (mime_multipart_ambiguous). Each
 *     is bounded.
 *  6. The raw part is a hard link to the message, last.
 *
 * Every limit is checked before bytes are written (mime_out_write), never after.
 *
 * Files: mime_out.c (part files, sha256), mime_embed.c (embedded payloads),
 * mime_leaf.c (decoding one leaf), mime_parse.c (pre-scan and parses), mime_diff.c
 * (parser differentials), mime_env.c (envelope from headers), this file (the walk,
 * entity ranges for strip, the raw part, the entry points); mime_int.h holds what
 * they share.
 */
#include "mime_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gmime/gmime.h>
#include <nettle/sha2.h>

#include "log.h"
#include "util.h"

/* Boundaries longer than GMime can match (its read buffer is 4 KiB); RFC 2046 allows 70. */
#define MIME_LONG_BOUNDARY 1000

/* ---- entity ranges for strip ----------------------------------------------------- */

/* n bytes of the message file at off into out (from memory when it is there). 0, or -1
 * with errno (EIO for a short read: the file changed under us). */
static int mime_msg_read(struct mime_ctx *c, uint64_t off, unsigned char *out, size_t n)
{
	if (off > c->msg_size || n > c->msg_size - off) {
		errno = EIO;
		return -1;
	}
	if (c->msg_mem) {
		memcpy(out, c->msg_mem + off, n);
		return 0;
	}
	ssize_t r = pread_full(c->msg_fd, out, n, (off_t)off);
	if (r < 0)
		return -1;
	if ((size_t)r != n) {
		errno = EIO;
		return -1;
	}
	return 0;
}

/* Is line [p, p+n) (with its line end) the delimiter "--bnd" plus transport padding? */
static int mime_entity_delim(const unsigned char *p, size_t n, const char *bnd)
{
	size_t bl = strlen(bnd);
	if (n < bl + 3 || p[0] != '-' || p[1] != '-' || memcmp(p + 2, bnd, bl) != 0)
		return 0;
	size_t k = bl + 2;
	while (k < n && (p[k] == ' ' || p[k] == '\t'))
		k++;
	if (k < n && p[k] == '\r')
		k++;
	return k + 1 == n && p[k] == '\n';
}

/* The MIME entity of the leaf obj, a child of the multipart with boundary bnd, as GMime
 * delimited it: from its first header line (or the body, for a part without headers)
 * to the end of its content, which GMime ends before the line end of the next
 * delimiter. The range is kept (c->ent_*) only if the bytes around it are what RFC 2046
 * puts there: a delimiter line of bnd right before it (for a part without headers, then
 * one empty line), and a line end and "--" right after it (or the end of the file).
 * (Lines GMime dropped before the first header are inside the range: it runs from the
 * delimiter, so it holds every reading of the part.) Anything else - a line before the
 * headers that is no delimiter, a content end GMime put elsewhere - leaves the leaf
 * without a range, so strip quarantines instead of guessing.
 * 0 (range set or not), or -1 on a read error (reason filled). */
static int mime_entity(struct mime_ctx *c, GMimeObject *obj, const char *bnd)
{
	c->ent_valid = 0;
	if (!GMIME_IS_PART(obj))
		return 0;
	GMimeDataWrapper *w = g_mime_part_get_content(GMIME_PART(obj));
	GMimeStream *s = w ? g_mime_data_wrapper_get_stream(w) : NULL;
	if (s == NULL || s->bound_start < 0 || s->bound_end < s->bound_start ||
	    (uint64_t)s->bound_end > c->msg_size)
		return 0;
	uint64_t start = (uint64_t)s->bound_start, end = (uint64_t)s->bound_end;
	GMimeHeaderList *hl = g_mime_object_get_header_list(obj);
	int nh = hl ? g_mime_header_list_get_count(hl) : 0;
	for (int i = 0; i < nh; i++) {
		gint64 off = g_mime_header_get_offset(g_mime_header_list_get_header_at(hl, i));
		if (off < 0 || (uint64_t)off >= (uint64_t)s->bound_start)
			return 0;
		if ((uint64_t)off < start)
			start = (uint64_t)off;
	}
	/* The line before start: at most one delimiter (boundaries GMime matches are
	 * shorter than MIME_LONG_BOUNDARY) plus padding, and maybe an empty line. */
	unsigned char *w8 = c->chunk;
	size_t want = start < 4096 ? (size_t)start : 4096;
	if (mime_msg_read(c, start - want, w8, want) < 0)
		return mime_fail(c, "read", "message");
	size_t pos = want;
	for (int round = 0; round < 2; round++) {
		if (pos == 0 || w8[pos - 1] != '\n')
			return 0;
		size_t ls = pos - 1;
		while (ls > 0 && w8[ls - 1] != '\n')
			ls--;
		if (ls == 0 && start > want)
			return 0; /* the line may start before the window: too long anyway */
		if (mime_entity_delim(w8 + ls, pos - ls, bnd))
			break;
		/* a part without headers starts with its empty line */
		int blank = pos - ls == 1 || (pos - ls == 2 && w8[ls] == '\r');
		if (round == 1 || nh > 0 || !blank)
			return 0;
		pos = ls;
	}
	start -= want - pos;
	if (end < c->msg_size) {
		unsigned char after[4];
		size_t an = c->msg_size - end < 4 ? (size_t)(c->msg_size - end) : 4;
		if (mime_msg_read(c, end, after, an) < 0)
			return mime_fail(c, "read", "message");
		int ok = (an >= 3 && after[0] == '\n' && after[1] == '-' && after[2] == '-') ||
		         (an >= 4 && after[0] == '\r' && after[1] == '\n' && after[2] == '-' &&
		          after[3] == '-');
		if (!ok)
			return 0;
	}
	if (start >= end)
		return 0;
	struct sha256_ctx sha;
	sha256_init(&sha);
	for (uint64_t at = start; at < end;) {
		size_t n = end - at < MIME_CHUNK ? (size_t)(end - at) : MIME_CHUNK;
		if (mime_msg_read(c, at, c->chunk, n) < 0)
			return mime_fail(c, "read", "message");
		sha256_update(&sha, n, c->chunk);
		at += n;
	}
	mime_sha_hex(&sha, c->ent_sha);
	c->ent_start = start;
	c->ent_end = end;
	c->ent_valid = 1;
	return 0;
}

/* Visit obj, which sits at depth; is_body: obj is the body of a message whose section
 * path is path ("" for the top level). */
int mime_walk(struct mime_ctx *c, GMimeObject *obj, const char *path, int is_body, uint64_t depth)
{
	if (obj == NULL || c->stop)
		return 0;
	if (GMIME_IS_MULTIPART(obj)) {
		GMimeMultipart *mp = GMIME_MULTIPART(obj);
		const char *cpath = path[0] ? path : "0";
		if (depth + 1 > c->lim->max_depth) {
			manifest_add_unscannable(c->m, MIME_OVER("max_depth"));
			return 0;
		}
		const char *pro = c->only ? NULL : g_mime_multipart_get_prologue(mp);
		const char *bnd = g_mime_multipart_get_boundary(mp);
		int n = g_mime_multipart_get_count(mp), mine = 0;
		mime_multipart_ambiguous(c, obj, bnd);
		if (n == 0 && pro && bnd && strlen(bnd) > MIME_LONG_BOUNDARY) {
			int was_direct = c->direct;
			c->direct = 0; /* parsed from a copy of the preamble */
			int r = mime_split_long(c, pro, bnd, path, depth);
			c->direct = was_direct;
			if (r <= 0)
				return r;
		}
		if (mime_has_text(pro) && mime_write_text(c, cpath, FOUND_PREAMBLE, pro) < 0)
			return -1;
		if (mime_other_delimiters(c, pro, bnd, path, is_body, depth, &mine) < 0)
			return -1;
		for (int i = 0; i < n && !c->stop; i++) {
			char sub[4096];
			if (bsnprintf(sub, sizeof sub, path[0] ? "%s.%d" : "%s%d", path, i + 1) <
			    0) {
				/* unreachable while max_depth keeps paths short; fail closed if not
				 */
				manifest_add_unscannable(c->m, MIME_OVER("max_depth"));
				return 0;
			}
			const char *was_bnd = c->parent_bnd;
			c->parent_bnd = bnd;
			int wr = mime_walk(c, g_mime_multipart_get_part(mp, i), sub, 0, depth + 1);
			c->parent_bnd = was_bnd;
			if (wr < 0)
				return -1;
		}
		const char *epi = c->only ? NULL : g_mime_multipart_get_epilogue(mp);
		if (!c->stop && mime_has_text(epi) &&
		    mime_write_text(c, cpath, FOUND_EPILOGUE, epi) < 0)
			return -1;
		if (!c->stop && mime_other_delimiters(c, epi, bnd, path, is_body, depth, &mine) < 0)
			return -1;
		if (!c->stop &&
		    mime_encoded_multipart(c, obj, bnd, path, is_body, depth, &mine) < 0)
			return -1;
		return 0;
	}
	const char *bnd = c->parent_bnd;
	c->parent_bnd = NULL; /* a grandchild's parent is set by its own multipart */
	if (GMIME_IS_MESSAGE_PART(obj)) {
		GMimeMessage *msg = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));
		if (msg == NULL)
			return 0; /* an empty attached message: nothing to scan */
		if (depth + 1 > c->lim->max_depth) {
			manifest_add_unscannable(c->m, MIME_OVER("max_depth"));
			return 0;
		}
		return mime_walk(c, g_mime_message_get_mime_part(msg), path, 1, depth + 1);
	}
	char leafpath[4096];
	if (bsnprintf(leafpath, sizeof leafpath, is_body ? (path[0] ? "%s.1" : "1") : "%s", path) <
	    0) {
		manifest_add_unscannable(c->m, MIME_OVER("max_depth"));
		return 0;
	}
	if (c->only && !mime_exposed(c, obj))
		return 0;
	int rc;
	size_t before = c->m->n_parts;
	if (GMIME_IS_PART(obj) && mime_is_message_type(g_mime_object_get_content_type(obj))) {
		rc =
		    mime_encoded_message(c, GMIME_PART(obj), path, leafpath, depth, MIME_ENC_GMIME);
	} else {
		if (!is_body && bnd && c->direct && !c->in_alt && !c->only &&
		    mime_entity(c, obj, bnd) < 0)
			return -1;
		rc = mime_leaf(c, obj, leafpath);
		c->ent_valid = 0;
		/* the names and types other readers give this leaf (linked parts, no range of
		 * their own: strip cannot cut them, so a flagged one quarantines) */
		if (rc == 0 && !c->in_alt && !c->stop && c->m->n_parts > before &&
		    c->m->parts[before].found == FOUND_LEAF)
			rc = mime_other_names(c, obj, c->m->parts[before].index);
	}
	if (rc == 0 && !c->in_alt && GMIME_IS_PART(obj))
		rc = mime_alternatives(c, GMIME_PART(obj), path, is_body, leafpath, depth);
	return rc;
}

/* ---- the raw part ------------------------------------------------------------------ */

static int mime_raw(struct mime_ctx *c, int msg_fd, const char *msg_name, uint64_t size,
                    const char *sha)
{
	struct manifest_part *p =
	    manifest_add(c->m, "0", FOUND_RAW, "message/rfc822", "", "", "", 0);
	char name[16];
	manifest_part_name(p->index, name);
	p->size = size;
	snprintf(p->sha256, sizeof p->sha256, "%s", sha);
	/* A hard link costs no space and no time, whatever the size of the message. */
	if (linkat(c->dirfd, msg_name, c->dirfd, name, 0) == 0)
		return 0;
	if (errno != EPERM && errno != EMLINK && errno != EOPNOTSUPP && errno != ENOSYS)
		return mime_fail(c, "link message to", name);
	/* A filesystem without hard links: copy it. */
	int fd = openat(c->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
	if (fd < 0)
		return mime_fail(c, "create", name);
	if (copy_fd(msg_fd, fd) < 0) {
		close_keep_errno(fd);
		return mime_fail(c, "copy message to", name);
	}
	if (close(fd) < 0)
		return mime_fail(c, "close", name);
	return 0;
}

/* ---- entry points ------------------------------------------------------------------ */

void mime_init(void)
{
	static int done;
	if (!done) {
		g_mime_init();
		done = 1;
	}
}

GMimeParserOptions *mime_options(void)
{
	GMimeParserOptions *o = g_mime_parser_options_new();
	/* take broken mail as far as it goes rather than rejecting it */
	g_mime_parser_options_set_address_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
	g_mime_parser_options_set_parameter_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
	g_mime_parser_options_set_rfc2047_compliance_mode(o, GMIME_RFC_COMPLIANCE_LOOSE);
	return o;
}

int mime_extract(int msg_fd, const char *msg_name, int dirfd, const struct mime_limits *lim,
                 struct manifest *m, char *reason, size_t rlen)
{
	struct mime_ctx c;
	memset(&c, 0, sizeof c);
	c.dirfd = dirfd;
	c.lim = lim;
	c.m = m;
	c.reason = reason;
	c.rlen = rlen;
	c.msg_fd = msg_fd;
	/* one slot stays for the raw part, so that all parts together stay within max_parts */
	c.content_max = lim->max_parts;
	if (lim->scan_raw && c.content_max > 0)
		c.content_max--;
	mime_init();

	struct stat st;
	if (fstat(msg_fd, &st) < 0)
		return mime_fail(&c, "stat", msg_name);
	if (!S_ISREG(st.st_mode)) {
		snprintf(reason, rlen, "not a regular file");
		return 1;
	}
	uint64_t size = (uint64_t)st.st_size;
	c.msg_size = size;
	if (size == 0) {
		snprintf(reason, rlen, "empty file");
		return 1;
	}

	int rc = -1;
	char sha_hex[65];
	struct sha256_ctx sha;
	sha256_init(&sha);
	GByteArray *whole = NULL;
	c.chunk = xmalloc(MIME_CHUNK);
	c.opts = mime_options();
	g_mime_parser_options_set_warning_callback(c.opts, mime_warning, &c);
	struct mime_scan scan;
	int over = size > lim->max_message_size;
	/* The bound on decoded bytes: the absolute cap, or a small multiple of the message,
	 * whichever is lower, so that an expanding encoding (BinHex run-length coding, up
	 * to 96x) is stopped after a few times the bytes received. */
	c.total_max = lim->max_total_size;
	c.total_why = MIME_OVER("max_total_size");
	if (lim->max_expansion > 0) {
		uint64_t ratio = size <= (UINT64_MAX - MIME_EXPANSION_SLACK) / lim->max_expansion
		                     ? size * lim->max_expansion + MIME_EXPANSION_SLACK
		                     : UINT64_MAX;
		if (ratio < c.total_max) {
			c.total_max = ratio;
			c.total_why = MIME_OVER("max_expansion");
		}
	}
	/* GMime reads a file stream 4 KiB at a time with a seek before each read: a small
	 * message costs a dozen calls that one read of the whole file saves. */
	if (size <= lim->mem_max && size <= G_MAXUINT) { /* (a GByteArray's length is a guint) */
		whole = g_byte_array_sized_new((guint)size);
		g_byte_array_set_size(whole, (guint)size);
		ssize_t r = pread_full(msg_fd, whole->data, (size_t)size, 0);
		if (r < 0) {
			mime_fail(&c, "read", msg_name);
			goto out;
		}
		if ((uint64_t)r == size) {
			c.msg_mem = whole->data;
			c.mem = g_mime_stream_mem_new_with_byte_array(whole);
			g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(c.mem), FALSE);
			c.mem_fd = msg_fd;
		}
		/* (the file shrank under us: read it from the file as it is) */
	}
	/* An oversized message is not parsed; its raw part still needs its hash. */
	if (mime_prescan(msg_fd, c.mem ? whole->data : NULL, size,
	                 over ? UINT64_MAX : mime_budget(lim), &sha, &scan, c.chunk) < 0) {
		mime_fail(&c, "read", msg_name);
		goto out;
	}
	mime_sha_hex(&sha, sha_hex);
	if (over) {
		manifest_add_unscannable(m, MIME_OVER("max_message_size"));
	} else {
		if (scan.why)
			manifest_add_unscannable(m, scan.why);
		int pr = mime_source(&c, msg_fd, 0, scan.cut, "", 0);
		uint64_t skip;
		/* Junk before the first header (a line of blanks, a stray line): GMime gives
		 * up, other readers skip it. Skip it too rather than lose the message. */
		if (pr > 0 && mime_first_header(msg_fd, scan.cut, c.chunk, &skip) == 0 && skip > 0)
			pr = mime_source(&c, msg_fd, skip, scan.cut, "", 0);
		if (pr < 0)
			goto out;
		/* (a prefix cut before the end of the first header is over a limit, and marked) */
		if (pr > 0 && scan.why == NULL) {
			snprintf(reason, rlen, "not a message: no header block");
			rc = 1;
			goto out;
		}
	}
	if (lim->scan_raw && mime_raw(&c, msg_fd, msg_name, size, sha_hex) < 0)
		goto out;
	rc = 0;
out:;
	int e = errno;
	g_mime_parser_options_free(c.opts);
	if (c.mem)
		g_object_unref(c.mem);
	if (whole)
		g_byte_array_unref(whole);
	free(c.chunk);
	errno = e;
	return rc;
}
