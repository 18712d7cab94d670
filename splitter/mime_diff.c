/*
 * mime_diff - parser differentials: the readings of a message that other mail readers
 * make and GMime does not (conflicting headers, RFC 2231 parameters, other names of a
 * leaf, transfer-encoded multiparts, delimiter-like lines, long boundaries), extracted
 * or marked ambiguous.
 * The contract of the extractor is in mime.h; what the files share, in mime_int.h.
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

/* Conflicting Content-Type / Content-Transfer-Encoding headers: at most this many other
 * readings per part and per message (each costs a parse or a decode of the part). */
#define MIME_ALT_PER_PART 3
#define MIME_ALT_MAX      16
#define MIME_AMBIGUOUS    "ambiguous structure (too many conflicting headers)"
/* Readings of one multipart that other mail readers make and GMime does not (see
 * mime_multipart_ambiguous, mime_other_delimiters): marked, or extracted. */
#define MIME_AMB_BOUNDARY "ambiguous structure (conflicting boundary parameters)"
#define MIME_AMB_CT       "ambiguous structure (conflicting Content-Type headers on a multipart)"
/* Values of one parameter collected from one header value (more are not looked at: a
 * header with this many is ambiguous anyway). */
#define MIME_PARAM_VALUES 8

/* ---- parser differentials ---------------------------------------------------------- */

int mime_has_text(const char *s)
{
	for (; s && *s; s++)
		if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n')
			return 1;
	return 0;
}

/* GMime's reading of conflicting headers is the last Content-Type and the last
 * Content-Transfer-Encoding; other mail readers take the first (Python's email package,
 * several clients). A sender can hide an attachment from one reading by adding a header
 * for the other, so a leaf with conflicting headers is also extracted under each other
 * reading that can change what the scanner sees:
 *  - another Content-Type that makes the bytes a multipart or an attached message: the
 *    leaf's content is parsed again behind that header (a GMimeStreamCat of the rewritten
 *    header block and the content window, so nothing is copied) and walked at the same
 *    path;
 *  - another transfer encoding: the leaf is decoded again with it.
 * A Content-Type that only renames a leaf changes no byte, and is skipped. */
static int mime_alt_budget(struct mime_ctx *c, int *mine)
{
	if (*mine >= MIME_ALT_PER_PART || c->alts >= MIME_ALT_MAX) {
		manifest_add_unscannable(c->m, MIME_AMBIGUOUS);
		return 0;
	}
	(*mine)++;
	c->alts++;
	return 1;
}

/* May a multipart's other reading (mime_encoded_multipart, mime_other_delimiters) be
 * made here? Both ask the same: 1 to go on, 0 to make none.
 *  - the reading of dropped header lines writes only the leaves it exposes: none;
 *  - inside an other reading already: no reading of a reading (the work stays bounded),
 *    and what that one would have shown is not seen, so the message is unscannable
 *    (ambiguous) rather than passed on one reading;
 *  - else it is one more alternative view, within the per-part and per-message bound
 *    (mime_alt_budget marks it unscannable past that). */
static int mime_mp_reading_admit(struct mime_ctx *c, int *mine)
{
	if (c->only)
		return 0;
	if (c->in_mp_alt) {
		manifest_add_unscannable(c->m, MIME_AMBIGUOUS);
		return 0;
	}
	return mime_alt_budget(c, mine);
}

static GMimeContentEncoding mime_enc_class(const char *v)
{
	GMimeContentEncoding e = g_mime_content_encoding_from_string(v);
	/* identity encodings give the same bytes */
	if (e == GMIME_CONTENT_ENCODING_7BIT || e == GMIME_CONTENT_ENCODING_8BIT ||
	    e == GMIME_CONTENT_ENCODING_BINARY)
		e = GMIME_CONTENT_ENCODING_DEFAULT;
	return e;
}

static int mime_alt_content_type(struct mime_ctx *c, GMimePart *part, const char *ctv,
                                 const char *path, int is_body, uint64_t depth)
{
	GMimeObject *obj = GMIME_OBJECT(part);
	GMimeDataWrapper *w = g_mime_part_get_content(part);
	GMimeStream *s = w ? g_mime_data_wrapper_get_stream(w) : NULL;
	if (s == NULL)
		return 0;
	GMimeHeaderList *hl = g_mime_object_get_header_list(obj);
	int n = g_mime_header_list_get_count(hl);
	struct buf hdr;
	buf_init(&hdr);
	for (int i = 0; i < n; i++) {
		GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
		const char *name = g_mime_header_get_name(h);
		if (g_ascii_strcasecmp(name, "Content-Type") == 0)
			continue;
		buf_printf(&hdr, "%s:%s", name, g_mime_header_get_raw_value(h));
	}
	buf_printf(&hdr, "Content-Type:%s\n", ctv);
	GMimeStream *cat = g_mime_stream_cat_new();
	GMimeStream *head = g_mime_stream_mem_new_with_buffer(hdr.data, hdr.len);
	GMimeStream *body = g_mime_stream_substream(s, s->bound_start, s->bound_end);
	g_mime_stream_cat_add_source(GMIME_STREAM_CAT(cat), head);
	g_mime_stream_cat_add_source(GMIME_STREAM_CAT(cat), body);
	g_object_unref(head);
	g_object_unref(body);
	buf_free(&hdr);
	GMimeParser *parser = g_mime_parser_new_with_stream(cat);
	g_mime_parser_set_persist_stream(parser, TRUE);
	GMimeObject *alt = g_mime_parser_construct_part(parser, c->opts);
	g_object_unref(parser);
	g_object_unref(cat);
	if (alt == NULL)
		return 0;
	c->in_alt = 1;
	int rc = mime_walk(c, alt, path, is_body, depth);
	c->in_alt = 0;
	g_object_unref(alt);
	return rc;
}

int mime_alternatives(struct mime_ctx *c, GMimePart *part, const char *path, int is_body,
                      const char *leafpath, uint64_t depth)
{
	GMimeObject *obj = GMIME_OBJECT(part);
	GMimeHeaderList *hl = g_mime_object_get_header_list(obj);
	int n = g_mime_header_list_get_count(hl), mine = 0;
	const char *last_ct = NULL, *last_te = NULL;
	for (int i = 0; i < n; i++) {
		GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
		const char *name = g_mime_header_get_name(h);
		if (g_ascii_strcasecmp(name, "Content-Type") == 0)
			last_ct = g_mime_header_get_raw_value(h);
		else if (g_ascii_strcasecmp(name, "Content-Transfer-Encoding") == 0)
			last_te = g_mime_header_get_raw_value(h);
	}
	GMimeContentEncoding used =
	    last_te ? mime_enc_class(last_te) : GMIME_CONTENT_ENCODING_DEFAULT;
	int is_msg = mime_is_message_type(g_mime_object_get_content_type(obj));
	for (int i = 0; i < n && !c->stop; i++) {
		GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
		const char *name = g_mime_header_get_name(h);
		const char *v = g_mime_header_get_raw_value(h);
		int rc = 0;
		if (g_ascii_strcasecmp(name, "Content-Type") == 0 && v != last_ct &&
		    strcmp(v, last_ct) != 0) {
			GMimeContentType *t = g_mime_content_type_parse(c->opts, v);
			int structural = t && (g_mime_content_type_is_type(t, "multipart", "*") ||
			                       mime_is_message_type(t));
			if (t)
				g_object_unref(t);
			if (structural && mime_alt_budget(c, &mine))
				rc = mime_alt_content_type(c, part, v, path, is_body, depth);
		} else if (g_ascii_strcasecmp(name, "Content-Transfer-Encoding") == 0 &&
		           v != last_te && mime_enc_class(v) != used) {
			GMimeContentEncoding e = mime_enc_class(v);
			/* the same other encoding twice is one reading */
			int seen = 0;
			for (int j = 0; j < i; j++) {
				GMimeHeader *hj = g_mime_header_list_get_header_at(hl, j);
				seen |= !g_ascii_strcasecmp(g_mime_header_get_name(hj), name) &&
				        mime_enc_class(g_mime_header_get_raw_value(hj)) == e;
			}
			if (!seen && mime_alt_budget(c, &mine)) {
				c->in_alt = 1;
				rc = is_msg ? mime_encoded_message(c, part, path, leafpath, depth,
				                                   (int)e)
				            : mime_leaf_enc(c, obj, leafpath, (int)e, v);
				c->in_alt = 0;
			}
		}
		if (rc < 0)
			return -1;
	}
	return 0;
}

/* RFC 2231 percent-decoding of val (after charset'lang' when lang): a new string. */
static char *mime_2231_decode(const char *val, int lang)
{
	const char *a = lang ? strchr(val, '\'') : NULL;
	const char *b = a ? strchr(a + 1, '\'') : NULL;
	GString *dec = g_string_new(NULL);
	for (const char *r = b ? b + 1 : val; *r; r++) {
		if (*r == '%' && g_ascii_isxdigit(r[1]) && g_ascii_isxdigit(r[2])) {
			g_string_append_c(dec, (char)(g_ascii_xdigit_value(r[1]) * 16 +
			                              g_ascii_xdigit_value(r[2])));
			r += 2;
		} else {
			g_string_append_c(dec, *r);
		}
	}
	return g_string_free(dec, FALSE);
}

/* RFC 2231 continuations (name*0=, name*1*=, ...) joined: at most this many pieces. */
#define MIME_PARAM_PIECES 64

/* The values that some reader may take for the parameter name in the raw header value v
 * (a Content-Type or Content-Disposition value, unfolded), into vals (each g_malloc'ed),
 * at most MIME_PARAM_VALUES; returns how many. A careful reader (GMime) takes quoting
 * into account and one of several duplicates; a naive one searches for "name=" anywhere,
 * also inside a quoted value (foo="z;boundary=Q"; boundary=X reads as Q), and may take
 * the first or the last duplicate; a reader of RFC 2231 prefers name*= or the joined
 * continuations name*0=, name*1*=, ..., others ignore them. So every occurrence of name=,
 * wherever it is, gives a value (a quoted string up to its closing quote, else up to ';'
 * or a blank), name*= gives its percent-decoded value, and the continuations, joined in
 * order up to the first missing piece, give one more. */
static size_t mime_param_values(const char *v, const char *name, char **vals)
{
	size_t n = 0, nl = strlen(name), npieces = 0;
	char *piece[MIME_PARAM_PIECES] = {0};
	for (const char *p = v; *p && n < MIME_PARAM_VALUES; p++) {
		if (g_ascii_strncasecmp(p, name, nl) != 0)
			continue;
		if (p > v && !strchr(" \t\r\n;\"'", p[-1]))
			continue;
		const char *q = p + nl;
		int ext = 0;
		long idx = -1;
		if (*q == '*') {
			q++;
			if (g_ascii_isdigit(*q)) {
				idx = 0;
				while (g_ascii_isdigit(*q) && idx < MIME_PARAM_PIECES)
					idx = idx * 10 + (*q++ - '0');
				if (*q == '*') {
					ext = 1;
					q++;
				}
			} else {
				ext = 1;
			}
		}
		while (*q == ' ' || *q == '\t')
			q++;
		if (*q != '=')
			continue;
		q++;
		while (*q == ' ' || *q == '\t')
			q++;
		GString *val = g_string_new(NULL);
		if (*q == '"') {
			for (q++; *q && *q != '"'; q++) {
				if (*q == '\\' && q[1])
					q++;
				g_string_append_c(val, *q);
			}
		} else {
			for (;
			     *q && *q != ';' && *q != ' ' && *q != '\t' && *q != '\r' && *q != '\n';
			     q++)
				g_string_append_c(val, *q);
		}
		char *s = ext ? mime_2231_decode(val->str, idx <= 0) : g_strdup(val->str);
		g_string_free(val, TRUE);
		if (idx < 0) {
			vals[n++] = s;
		} else if (idx < MIME_PARAM_PIECES && piece[idx] == NULL) {
			piece[idx] = s;
			npieces++;
		} else {
			g_free(s);
		}
	}
	if (npieces > 0) {
		GString *joined = g_string_new(NULL);
		for (size_t i = 0; i < MIME_PARAM_PIECES && piece[i]; i++)
			g_string_append(joined, piece[i]);
		if (n < MIME_PARAM_VALUES)
			vals[n++] = g_string_free(joined, FALSE);
		else
			g_string_free(joined, TRUE);
		for (size_t i = 0; i < MIME_PARAM_PIECES; i++)
			g_free(piece[i]);
	}
	return n;
}

/* The readings of a multipart that other mail readers may make and GMime does not,
 * where extracting them would mean parsing its body again with another structure. They
 * are cheap to see and rare in real mail (see docs/CONFORMANCE.md), so the message is
 * marked rather than parsed once per reading:
 *  - two Content-Type headers with different values (GMime takes the last, others the
 *    first: another boundary, or no multipart at all);
 *  - a boundary that some reader reads differently: duplicates with other values, an
 *    RFC 2231 value next to a plain one, "boundary=" inside another quoted parameter.
 * Folding is undone first (a boundary folded over two lines is one value). */
void mime_multipart_ambiguous(struct mime_ctx *c, GMimeObject *obj, const char *bnd)
{
	GMimeHeaderList *hl = g_mime_object_get_header_list(obj);
	int n = g_mime_header_list_get_count(hl);
	const char *first_ct = NULL;
	for (int i = 0; i < n; i++) {
		GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
		const char *name = g_mime_header_get_name(h);
		const char *v = g_mime_header_get_raw_value(h);
		if (v == NULL)
			continue;
		if (g_ascii_strcasecmp(name, "Content-Transfer-Encoding") == 0)
			continue; /* mime_encoded_multipart */
		if (g_ascii_strcasecmp(name, "Content-Type") != 0)
			continue;
		if (first_ct == NULL) {
			first_ct = v;
		} else {
			/* the same header twice is one reading; blanks and folding aside */
			char *a = g_strstrip(g_strdup(first_ct)), *b = g_strstrip(g_strdup(v));
			if (strcmp(a, b) != 0)
				manifest_add_unscannable(c->m, MIME_AMB_CT);
			g_free(a);
			g_free(b);
		}
		char *vals[MIME_PARAM_VALUES];
		char *unfolded = g_strdup(v);
		char *w = unfolded;
		for (const char *r = v; *r; r++)
			if (*r != '\r' && *r != '\n')
				*w++ = *r;
		*w = '\0';
		size_t nv = mime_param_values(unfolded, "boundary", vals);
		g_free(unfolded);
		for (size_t k = 0; k < nv; k++) {
			if (bnd == NULL || strcmp(vals[k], bnd) != 0)
				manifest_add_unscannable(c->m, MIME_AMB_BOUNDARY);
			g_free(vals[k]);
		}
	}
}

/* Another name (or media type) for the leaf part idx, that some reader gives it: the
 * same bytes listed once more under that name, as a hard link to the part file (no
 * space, no decoding), so that policies on names and types (the router's banned
 * extensions and types) see every reading. It is scanned again like any part. */
static int mime_link_reading(struct mime_ctx *c, unsigned idx, const char *type,
                             const char *filename)
{
	if (mime_limit_parts(c))
		return 0;
	const struct manifest_part *src = &c->m->parts[idx - 1];
	/* copies: manifest_add may move the parts array */
	char *path = xstrdup(src->path), *t = xstrdup(type ? type : src->type);
	char *cs = xstrdup(src->charset), *cte = xstrdup(src->cte);
	const char *fn = filename ? filename : src->filename;
	char *name = xstrndup(fn, strnlen(fn, MIME_FILENAME_MAX));
	uint64_t size = src->size;
	char sha[65];
	memcpy(sha, src->sha256, sizeof sha);
	struct manifest_part *p =
	    manifest_add(c->m, path, FOUND_LEAF, t, cs, cte, name, strlen(name));
	p->size = size;
	memcpy(p->sha256, sha, sizeof sha);
	unsigned to_index = p->index;
	free(path);
	free(t);
	free(cs);
	free(cte);
	free(name);
	char from[16], to[16];
	manifest_part_name(idx, from);
	manifest_part_name(to_index, to);
	if (linkat(c->dirfd, from, c->dirfd, to, 0) == 0)
		return 0;
	if (errno != EPERM && errno != EMLINK && errno != EOPNOTSUPP && errno != ENOSYS)
		return mime_fail(c, "link part to", to);
	/* no hard links here: a copy (the same bytes, counted like decoded ones) */
	if (c->total + size > c->total_max) {
		c->stop = 1;
		manifest_add_unscannable(c->m, c->total_why);
		return 0;
	}
	int in = openat(c->dirfd, from, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (in < 0)
		return mime_fail(c, "open", from);
	int out = openat(c->dirfd, to, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
	if (out < 0 || copy_fd(in, out) < 0) {
		close_keep_errno(in);
		close_keep_errno(out);
		return mime_fail(c, "copy part to", to);
	}
	close(in);
	c->total += size;
	return close(out) < 0 ? mime_fail(c, "close", to) : 0;
}

/* Is s one of the n strings in v? */
static int mime_seen(char *const *v, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i], s) == 0)
			return 1;
	return 0;
}

/* The names other readers give the leaf part idx: GMime names it from the first of
 * Content-Disposition filename, Content-Type name. Others take the other parameter, the
 * other duplicate, the plain value next to an RFC 2231 one, or a "name=" inside another
 * quoted value; every such name (decoded from RFC 2047 where it is an encoded word) and
 * every other media type of a Content-Type header that does not change the bytes (the
 * ones that do are mime_alternatives' readings) gets a linked part. */
int mime_other_names(struct mime_ctx *c, GMimeObject *obj, unsigned idx)
{
	char *seen[2 * MIME_PARAM_VALUES + 2];
	size_t ns = 0;
	int mine = 0, rc = 0;
	seen[ns++] = xstrdup(c->m->parts[idx - 1].filename);
	GMimeHeaderList *hl = g_mime_object_get_header_list(obj);
	int n = g_mime_header_list_get_count(hl);
	for (int i = 0; i < n && rc == 0 && !c->stop; i++) {
		GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
		const char *hn = g_mime_header_get_name(h);
		const char *v = g_mime_header_get_raw_value(h);
		int is_ct = g_ascii_strcasecmp(hn, "Content-Type") == 0;
		if (v == NULL || (!is_ct && g_ascii_strcasecmp(hn, "Content-Disposition") != 0))
			continue;
		char *u = g_strdup(v), *w = u;
		for (const char *r = v; *r; r++)
			if (*r != '\r' && *r != '\n')
				*w++ = *r;
		*w = '\0';
		char *vals[2 * MIME_PARAM_VALUES];
		size_t nv = mime_param_values(u, "filename", vals);
		nv += mime_param_values(u, "name", vals + nv);
		for (size_t k = 0; k < nv; k++) {
			char *d = g_mime_utils_header_decode_text(c->opts, vals[k]);
			g_free(vals[k]);
			if (rc == 0 && !c->stop && d[0] && ns < ARRAY_LEN(seen) &&
			    !mime_seen(seen, ns, d)) {
				seen[ns++] = xstrdup(d);
				if (mime_alt_budget(c, &mine))
					rc = mime_link_reading(c, idx, NULL, d);
			}
			g_free(d);
		}
		if (is_ct && rc == 0 && !c->stop) {
			GMimeContentType *t = g_mime_content_type_parse(c->opts, u);
			char *mt = t ? g_mime_content_type_get_mime_type(t) : NULL;
			char *lt = mt ? mime_field(mt, MIME_FIELD_MAX, 1) : NULL;
			if (lt && strcmp(lt, c->m->parts[idx - 1].type) != 0 &&
			    !g_mime_content_type_is_type(t, "multipart", "*") &&
			    !mime_is_message_type(t) && mime_alt_budget(c, &mine))
				rc = mime_link_reading(c, idx, lt, NULL);
			free(lt);
			g_free(mt);
			if (t)
				g_object_unref(t);
		}
		g_free(u);
	}
	for (size_t i = 0; i < ns; i++)
		free(seen[i]);
	return rc;
}

/* A multipart with a Content-Transfer-Encoding that is not an identity (RFC 2045 forbids
 * any other): GMime ignores it and parses the bytes as they are; a reader that decodes
 * first parses other bytes (base64 that decodes to a whole other body, quoted-printable
 * whose =2D=2D becomes a delimiter). So the multipart's content, as GMime reproduces it
 * (preamble, delimiters, each part's headers and undecoded content, epilogue), is
 * decoded into an unnamed temporary file behind its own Content-Type and parsed again,
 * and that reading is walked like the first. Bounded: one file of at most the size of
 * the content, counted against the decoded-bytes bound, and one other reading. */
int mime_encoded_multipart(struct mime_ctx *c, GMimeObject *obj, const char *bnd, const char *path,
                           int is_body, uint64_t depth, int *mine)
{
	const char *te = g_mime_object_get_header(obj, "Content-Transfer-Encoding");
	if (te == NULL || bnd == NULL)
		return 0;
	char *t = g_strstrip(g_strdup(te));
	GMimeContentEncoding enc = mime_enc_class(t);
	g_free(t);
	if (enc != GMIME_CONTENT_ENCODING_BASE64 && enc != GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE &&
	    enc != GMIME_CONTENT_ENCODING_UUENCODE)
		return 0;
	if (!mime_mp_reading_admit(c, mine))
		return 0;
	int fd = mime_tmpfile(c);
	if (fd < 0)
		return -1;
	int rc = -1;
	GMimeStream *out = g_mime_stream_fs_new(fd); /* owns fd */
	GMimeContentType *ct = g_mime_object_get_content_type(obj);
	char *mt = g_mime_content_type_get_mime_type(ct);
	GString *hdr = g_string_new("Content-Type: ");
	g_string_append(hdr, mt);
	g_string_append(hdr, "; boundary=\"");
	for (const char *b = bnd; *b; b++) {
		if (*b == '"' || *b == '\\')
			g_string_append_c(hdr, '\\');
		g_string_append_c(hdr, *b);
	}
	g_string_append(hdr, "\"\n\n");
	g_free(mt);
	GMimeStream *dec = g_mime_stream_filter_new(out);
	GMimeFilter *f = g_mime_filter_basic_new(enc, FALSE);
	g_mime_stream_filter_add(GMIME_STREAM_FILTER(dec), f);
	g_object_unref(f);
	if (g_mime_stream_write(out, hdr->str, hdr->len) < 0 ||
	    g_mime_object_write_content_to_stream(obj, NULL, dec) < 0 ||
	    g_mime_stream_flush(dec) < 0 || g_mime_stream_flush(out) < 0) {
		int e = errno ? errno : EIO;
		snprintf(c->reason, c->rlen, "decode encoded multipart at %s: %s", path,
		         strerror(e));
		errno = e;
		goto out;
	}
	gint64 len = g_mime_stream_tell(out);
	rc = 0;
	if (len < 0 || c->total + (uint64_t)len > c->total_max) {
		c->stop = 1;
		manifest_add_unscannable(c->m, c->total_why);
		goto out;
	}
	c->total += (uint64_t)len;
	GMimeMessage *msg;
	uint64_t stop;
	int pr = mime_parse_fd(c, fd, 0, (uint64_t)len, NULL, 0, &msg, &stop);
	if (pr < 0) {
		rc = -1;
		goto out;
	}
	if (pr == 0) {
		int was = c->in_alt;
		c->in_alt = c->in_mp_alt = 1;
		rc = mime_walk(c, g_mime_message_get_mime_part(msg), path, is_body, depth);
		c->in_alt = was;
		c->in_mp_alt = 0;
		g_object_unref(msg);
	}
out:
	g_string_free(hdr, TRUE);
	g_object_unref(dec);
	g_object_unref(out);
	return rc;
}

/* Does the line l[0, n) start with "--" and the boundary b? */
static int mime_delimiter_like(const char *l, size_t n, const char *b, size_t bl)
{
	return n >= bl + 2 && l[0] == '-' && l[1] == '-' && memcmp(l + 2, b, bl) == 0;
}

/* A preamble or an epilogue that holds lines starting with the multipart's delimiter
 * ("--boundary"): GMime took none of them (in a preamble, "--boundary" followed by
 * other characters, which readers that match the boundary as a prefix take; in an
 * epilogue, anything after the close delimiter, which readers that do not stop there
 * go on parsing). Those readers see parts there, which GMime keeps as undecoded text.
 * So the text is parsed once more as a multipart whose delimiters are exactly those
 * lines, and its parts are written like any other (bounded: one parse of text already
 * in memory, counted as an other reading). In an other reading already, it is marked. */
int mime_other_delimiters(struct mime_ctx *c, const char *text, const char *bnd, const char *path,
                          int is_body, uint64_t depth, int *mine)
{
	if (text == NULL || bnd == NULL || bnd[0] == '\0')
		return 0;
	size_t bl = strlen(bnd);
	const char *p = text, *end = text + strlen(text), *first = NULL;
	for (const char *l = p; l < end;) {
		const char *eol = memchr(l, '\n', (size_t)(end - l));
		size_t len = (size_t)((eol ? eol : end) - l);
		if (mime_delimiter_like(l, len, bnd, bl)) {
			first = l;
			break;
		}
		l = eol ? eol + 1 : end;
	}
	if (first == NULL || !mime_mp_reading_admit(c, mine))
		return 0;
	/* a delimiter that occurs nowhere in the text */
	char sep[64];
	unsigned k = 0;
	do
		snprintf(sep, sizeof sep, "=_spoold_other_reading_%u", k++);
	while (strstr(text, sep) != NULL);
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "Content-Type: multipart/mixed; boundary=\"%s\"\n\n", sep);
	for (const char *l = first; l < end;) {
		const char *eol = memchr(l, '\n', (size_t)(end - l));
		size_t len = (size_t)((eol ? eol : end) - l);
		if (mime_delimiter_like(l, len, bnd, bl))
			buf_printf(&b, "--%s\n", sep);
		else {
			buf_add(&b, l, len);
			buf_add(&b, "\n", 1);
		}
		l = eol ? eol + 1 : end;
	}
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(b.data, b.len);
	GMimeParser *parser = g_mime_parser_new_with_stream(st);
	GMimeObject *alt = g_mime_parser_construct_part(parser, c->opts);
	g_object_unref(parser);
	g_object_unref(st);
	buf_free(&b);
	if (alt == NULL)
		return 0;
	int was = c->in_alt;
	c->in_alt = c->in_mp_alt = 1;
	int rc = mime_walk(c, alt, path, is_body, depth);
	c->in_alt = was;
	c->in_mp_alt = 0;
	g_object_unref(alt);
	return rc;
}

/* Parse chunk[0..len) as one body part and walk it as part idx of path; *rc takes what
 * mime_walk returns (left as it is when GMime makes no part of it). -1 when the part's
 * path does not fit: the caller passes over the rest, as a path that long is past any
 * depth limit anyway. */
static int mime_walk_chunk(struct mime_ctx *c, const char *chunk, size_t len, const char *path,
                           int idx, uint64_t depth, int *rc)
{
	char sub[4096];
	if (bsnprintf(sub, sizeof sub, path[0] ? "%s.%d" : "%s%d", path, idx) < 0)
		return -1;
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(chunk, len);
	GMimeParser *parser = g_mime_parser_new_with_stream(st);
	GMimeObject *obj = g_mime_parser_construct_part(parser, c->opts);
	g_object_unref(parser);
	g_object_unref(st);
	if (obj) {
		*rc = mime_walk(c, obj, sub, 0, depth + 1);
		g_object_unref(obj);
	}
	return 0;
}

/* GMime cannot match a boundary longer than its read buffer, and keeps the whole body
 * of such a multipart as its preamble. Split that preamble at the boundary lines here
 * and parse each part on its own (from memory: the preamble already is). Returns 1 if
 * no boundary line was found (the caller keeps the preamble as it is). */
int mime_split_long(struct mime_ctx *c, const char *body, const char *boundary, const char *path,
                    uint64_t depth)
{
	size_t blen = strlen(boundary);
	const char *p = body, *chunk = NULL, *end = body + strlen(body);
	int idx = 0, rc = 0;
	const char *cpath = path[0] ? path : "0";
	while (p < end && rc == 0 && !c->stop) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *next = eol ? eol + 1 : end;
		if ((size_t)(end - p) >= blen + 2 && p[0] == '-' && p[1] == '-' &&
		    memcmp(p + 2, boundary, blen) == 0) {
			int last = (size_t)(end - p) >= blen + 4 && p[blen + 2] == '-' &&
			           p[blen + 3] == '-';
			if (chunk == NULL) {
				char *pre = xstrndup(body, (size_t)(p - body));
				if (mime_has_text(pre))
					rc = mime_write_text(c, cpath, FOUND_PREAMBLE, pre);
				free(pre);
			} else {
				/* the line end before a boundary belongs to the boundary */
				size_t len = (size_t)(p - chunk);
				if (len > 0 && chunk[len - 1] == '\n')
					len--;
				if (mime_walk_chunk(c, chunk, len, path, ++idx, depth, &rc) < 0)
					return 0;
			}
			if (rc == 0 && last) {
				if (mime_has_text(next))
					rc = mime_write_text(c, cpath, FOUND_EPILOGUE, next);
				return rc;
			}
			chunk = next;
		}
		p = next;
	}
	if (chunk == NULL)
		return 1;
	if (rc == 0 && chunk < end && !c->stop) {
		/* no closing boundary: the last part runs to the end */
		if (mime_walk_chunk(c, chunk, (size_t)(end - chunk), path, ++idx, depth, &rc) < 0)
			return 0;
	}
	return rc;
}
