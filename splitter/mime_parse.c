/*
 * mime_parse - the bounded pre-scan, the GMime parse from memory or from the file,
 * junk before the first header, the reading of dropped header lines as a body, and
 * attached messages that GMime left encoded.
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

/* GMime object budget: each counted line may become up to this many objects... */
#define MIME_OBJECTS_PER_PART 3
/* ...and GMime may build at most this many, plus MIME_OBJECTS_PER_PART * max_parts. One
 * GMime object with its headers costs about 1-2 KiB, so the base is a few MiB. */
#define MIME_OBJECTS_BASE 4096

/* Longest run of a line and its continuation lines handed to GMime (see mime_prescan). */
#define MIME_RUN_MAX (1024 * 1024)
/* ...and of one that starts with "Content-": GMime's parameter list handling is
 * quadratic in the number of parameters (a 300 KB Content-Type of "; pN=v" takes 5 s of
 * CPU, 1 MiB a minute; fuzz_strip found it as a timeout). Real ones are a few KB, RFC
 * 2231 continuations of a long file name included. */
#define MIME_CONTENT_RUN_MAX (16 * 1024)
#define MIME_UNPARSED        "unparsed data (the MIME parser stopped before the end)"

/* ---- parsing ----------------------------------------------------------------------- */

/* Read fd [0, size) once: the sha256 into sha (if not NULL), and where the parse must
 * stop (scan->cut, size if it never must):
 *  - so that GMime builds at most budget objects: each line that may start an object
 *    (a boundary-like "--" line, a line naming a message/ type) counts;
 *  - before a run of more than MIME_RUN_MAX bytes (MIME_CONTENT_RUN_MAX if its first
 *    line starts with "Content-") made of a line and the lines that
 *    continue it (starting with a space or a tab): GMime keeps a header field, folded or
 *    not, whole in memory (three copies), and no run of that size is mail (RFC 5322
 *    lines are at most 998 bytes).
 * Either way the message is over a limit: the rest is not parsed, and marked. */
/* Does "message/" (in any case) end at a '/' of s[0, n)? tail holds the tail_len (at most
 * 7) bytes of the same line just before s. "message" is all letters, so c | 0x20 folds
 * exactly the bytes that can match. */
static int mime_names_message(const unsigned char *s, size_t n, const unsigned char *tail,
                              size_t tail_len)
{
	static const char pat[] = "message";
	const unsigned char *p = s, *end = s + n;
	while ((p = memchr(p, '/', (size_t)(end - p))) != NULL) {
		size_t k = (size_t)(p - s);
		if (k + tail_len >= 7) {
			int j = 0;
			for (; j < 7; j++) {
				long pos = (long)k - 7 + j;
				unsigned char c = pos >= 0 ? s[pos] : tail[(long)tail_len + pos];
				if ((c | 0x20) != (unsigned char)pat[j])
					break;
			}
			if (j == 7)
				return 1;
		}
		p++;
	}
	return 0;
}

int mime_prescan(int fd, const unsigned char *mem, uint64_t size, uint64_t budget,
                 struct sha256_ctx *sha, struct mime_scan *scan, unsigned char *chunk)
{
	uint64_t off = 0, objects = 0, line_start = 0, run_start = 0, run_len = 0;
	size_t bol_len = 0;   /* bytes seen of the current line, up to 2 */
	size_t tail_len = 0;  /* the last bytes of the current line, up to 7 */
	size_t rhead_len = 0; /* the first bytes of the current run, up to 8 */
	unsigned char bol[2], tail[7], rhead[8];
	int msg_seen = 0;
	scan->cut = size;
	scan->why = NULL;
	while (off < size) {
		/* from memory if the caller has the whole file there, else a chunk at a time */
		const unsigned char *buf = mem ? mem + off : chunk;
		ssize_t r = (ssize_t)(size - off);
		if (mem == NULL) {
			size_t want = size - off < MIME_CHUNK ? (size_t)(size - off) : MIME_CHUNK;
			r = pread(fd, chunk, want, (off_t)off);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -1;
			if (r == 0)
				break; /* the file shrank: parse what is there */
		}
		if (sha)
			sha256_update(sha, (size_t)r, buf);
		/* A line at a time: each piece [i, e) is the rest of the chunk's current line,
		 * followed by its '\n' when nl is set. */
		for (size_t i = 0, n = (size_t)r; i < n && scan->cut == size;) {
			const unsigned char *nlp = memchr(buf + i, '\n', n - i);
			size_t e = nlp ? (size_t)(nlp - buf) : n, len = e - i;
			int nl = nlp != NULL;
			/* A line that does not start with a space or a tab starts a new run. */
			if (bol_len == 0) {
				unsigned char first = len ? buf[i] : '\n';
				if (first != ' ' && first != '\t') {
					run_start = line_start;
					run_len = 0;
					rhead_len = 0;
				}
			}
			for (size_t k = i; rhead_len < sizeof rhead && k < e; k++)
				rhead[rhead_len++] = buf[k];
			run_len += len + (size_t)nl;
			if (run_len > MIME_RUN_MAX ||
			    (run_len > MIME_CONTENT_RUN_MAX && rhead_len == sizeof rhead &&
			     g_ascii_strncasecmp((const char *)rhead, "content-", 8) == 0)) {
				scan->cut = run_start;
				scan->why = MIME_OVER("max_header_size");
				break;
			}
			for (size_t k = i; bol_len < 2 && k < e; k++)
				bol[bol_len++] = buf[k];
			if (bol_len < 2 && nl)
				bol[bol_len++] = '\n';
			if (!msg_seen && mime_names_message(buf + i, len, tail, tail_len))
				msg_seen = 1;
			if (!nl) {
				/* The line goes on in the next chunk: keep its last 7 bytes. */
				if (len >= 7) {
					memcpy(tail, buf + e - 7, 7);
					tail_len = 7;
				} else {
					size_t keep = tail_len + len > 7 ? 7 - len : tail_len;
					memmove(tail, tail + tail_len - keep, keep);
					memcpy(tail + keep, buf + i, len);
					tail_len = keep + len;
				}
				i = e;
				continue;
			}
			/* a boundary line (or a line that looks like one) may start an object; a
			 * line naming a message/ type may start an encapsulated message */
			if (bol_len == 2 && bol[0] == '-' && bol[1] == '-')
				objects += MIME_OBJECTS_PER_PART;
			if (msg_seen)
				objects += MIME_OBJECTS_PER_PART;
			if (objects > budget) {
				scan->cut = line_start;
				scan->why = MIME_OVER("max_parts");
			}
			line_start = off + (uint64_t)e + 1;
			bol_len = 0;
			tail_len = 0;
			msg_seen = 0;
			i = e + 1;
		}
		if (scan->cut != size && sha == NULL)
			return 0;
		off += (uint64_t)r;
	}
	return 0;
}

/* A GMime parser over fd [start, end), with a line end inserted before each offset in
 * ins[0..nins) (ascending): 0 with *msg set, 1 if it is not a message, -1 on an error
 * (reason filled). *stop is where the parser stopped, in file offsets. The stream owns a
 * dup of fd, so the caller keeps its own descriptor; the message's substreams hold the
 * stream (and so the dup) until the message is released. */
int mime_parse_fd(struct mime_ctx *c, int fd, uint64_t start, uint64_t end, const uint64_t *ins,
                  size_t nins, GMimeMessage **msg, uint64_t *stop)
{
	*msg = NULL;
	*stop = start;
	GMimeStream *st;
	if (c->mem != NULL && fd == c->mem_fd) {
		/* the message is in memory (mime_extract): a window on it, no read calls */
		st = g_mime_stream_substream(c->mem, (gint64)start, (gint64)end);
	} else {
		int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (dfd < 0)
			return mime_fail(c, "dup", "message descriptor");
		st = g_mime_stream_fs_new_with_bounds(dfd, (gint64)start, (gint64)end);
	}
	if (nins > 0) {
		GMimeStream *fs = st;
		uint64_t pos = start;
		st = g_mime_stream_cat_new();
		for (size_t i = 0; i <= nins; i++) {
			uint64_t to = i < nins ? ins[i] : end;
			GMimeStream *sub = g_mime_stream_substream(fs, (gint64)pos, (gint64)to);
			g_mime_stream_cat_add_source(GMIME_STREAM_CAT(st), sub);
			g_object_unref(sub);
			if (i < nins) {
				GMimeStream *nl = g_mime_stream_mem_new_with_buffer("\n", 1);
				g_mime_stream_cat_add_source(GMIME_STREAM_CAT(st), nl);
				g_object_unref(nl);
			}
			pos = to;
		}
		g_object_unref(fs);
	}
	GMimeParser *parser = g_mime_parser_new_with_stream(st);
	g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
	/* persist: part contents stay windows on the file instead of copies in memory */
	g_mime_parser_set_persist_stream(parser, TRUE);
	*msg = g_mime_parser_construct_message(parser, c->opts);
	gint64 t = g_mime_parser_tell(parser);
	g_object_unref(parser);
	g_object_unref(st);
	/* back to file offsets: the cat stream is longer by the line ends inserted before t */
	uint64_t pos = t < 0 ? 0 : (uint64_t)t;
	if (nins == 0) {
		*stop = pos; /* a bounded file stream counts from the file's start */
	} else {
		/* a cat stream counts from 0; line end i sits at (ins[i] - start) + i */
		uint64_t shift = 0;
		for (size_t i = 0; i < nins && ins[i] - start + i < pos; i++)
			shift++;
		*stop = start + pos - shift;
	}
	return *msg ? 0 : 1;
}

/* Parse fd [start, end) as a message, all of it. GMime gives up on a header block line
 * it cannot take (one without a colon that is longer than its 4 KiB buffer, say a base64
 * body with no blank line before it) and silently ignores everything after it. Where it
 * stopped before the end, parse again with a line end inserted there, which makes the
 * line the start of a body, as other readers take it; at most MIME_REPARSE times. If the
 * parse still stops early, the message is marked. Returns like mime_parse_fd. */
#define MIME_REPARSE 8
static int mime_parse(struct mime_ctx *c, int fd, uint64_t start, uint64_t end, GMimeMessage **msg)
{
	uint64_t ins[MIME_REPARSE] = {0}, stop;
	size_t nins = 0;
	int pr = mime_parse_fd(c, fd, start, end, ins, 0, msg, &stop);
	c->collect = 0; /* offsets in later parses are not file offsets */
	while (pr == 0 && stop < end) {
		if (nins == MIME_REPARSE || (nins > 0 && stop <= ins[nins - 1])) {
			manifest_add_unscannable(c->m, MIME_UNPARSED);
			break;
		}
		ins[nins++] = stop;
		GMimeMessage *again;
		uint64_t stop2;
		int pr2 = mime_parse_fd(c, fd, start, end, ins, nins, &again, &stop2);
		if (pr2 < 0) {
			g_object_unref(*msg);
			*msg = NULL;
			return -1;
		}
		if (pr2 > 0) {
			manifest_add_unscannable(c->m, MIME_UNPARSED);
			break;
		}
		g_object_unref(*msg);
		*msg = again;
		stop = stop2;
		c->reparsed = 1; /* offsets are the cat stream's now, not the file's */
	}
	return pr;
}

/* The offset of the first line in the first MIME_CHUNK bytes that starts like a header
 * field ("name:", the name printable ASCII without a colon). 0 and *off, or -1. */
int mime_first_header(int fd, uint64_t end, unsigned char *buf, uint64_t *off)
{
	size_t want = end < MIME_CHUNK ? (size_t)end : MIME_CHUNK;
	ssize_t r;
	do
		r = pread(fd, buf, want, 0);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return -1;
	size_t n = (size_t)r, i = 0;
	while (i < n) {
		size_t j = i;
		while (j < n && buf[j] > ' ' && buf[j] < 0x7f && buf[j] != ':')
			j++;
		if (j > i && j < n && buf[j] == ':') {
			*off = i;
			return 0;
		}
		const unsigned char *nl = memchr(buf + i, '\n', n - i);
		if (nl == NULL)
			break;
		i = (size_t)(nl - buf) + 1;
	}
	return -1;
}

uint64_t mime_budget(const struct mime_limits *lim)
{
	uint64_t per = lim->max_parts < UINT64_MAX / MIME_OBJECTS_PER_PART
	                   ? lim->max_parts * MIME_OBJECTS_PER_PART
	                   : UINT64_MAX / 2;
	return MIME_OBJECTS_BASE + per;
}

/* An unnamed file in the work directory for a decoded attached message: O_TMPFILE where
 * the filesystem has it, else a dot-name that is unlinked at once. Either way no name
 * from the message is used and nothing is left behind. */
int mime_tmpfile(struct mime_ctx *c)
{
	int fd = openat(c->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
		return fd < 0 ? mime_fail(c, "create", "temporary file") : fd;
	char name[64];
	snprintf(name, sizeof name, ".mime-tmp.%ld.%u", (long)getpid(), c->tmp_seq++);
	fd = openat(c->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return mime_fail(c, "create", name);
	if (unlinkat(c->dirfd, name, 0) < 0) {
		close_keep_errno(fd);
		return mime_fail(c, "unlink", name);
	}
	return fd;
}

void mime_warning(gint64 offset, GMimeParserWarning code, const gchar *item, gpointer data)
{
	struct mime_ctx *c = data;
	(void)item;
	if (!c->collect || code != GMIME_CRIT_INVALID_HEADER_NAME || offset < 0 ||
	    c->njunk == MIME_JUNK_MAX ||
	    (c->njunk > 0 && (uint64_t)offset <= c->junk[c->njunk - 1]))
		return;
	c->junk[c->njunk++] = (uint64_t)offset;
}

/* Is obj a leaf whose content starts where a dropped header line became a body? */
int mime_exposed(struct mime_ctx *c, GMimeObject *obj)
{
	GMimeDataWrapper *w = GMIME_IS_PART(obj) ? g_mime_part_get_content(GMIME_PART(obj)) : NULL;
	GMimeStream *s = w ? g_mime_data_wrapper_get_stream(w) : NULL;
	for (size_t i = 0; s && i < c->nonly; i++)
		if (s->bound_start >= 0 && (uint64_t)s->bound_start == c->only[i])
			return 1;
	return 0;
}

/* GMime drops a line in a header block that is not a header field (and the lines that
 * continue it). Mostly that is right (a folded line that lost its blank), but where the
 * sender left out the blank line before the body, the body is what is dropped: a base64
 * attachment right under its headers would never be seen. So, where GMime dropped lines,
 * parse once more with a line end inserted before each, as readers that end the header
 * block there do (Python's email), and write the leaves whose content starts exactly
 * there: the bodies that the first reading lost. Nothing else is written twice. The
 * second reading is parsed from a copy in an unnamed temporary file, so that content
 * offsets are plain file offsets (bounded: a copy of the message, once). */
/* Is there an empty line in fd [from, to)? (1, 0, or -1 on a read error) */
static int mime_has_empty_line(struct mime_ctx *c, int fd, uint64_t from, uint64_t to)
{
	int last_nl = 0, cr = 0; /* after "\n", possibly followed by "\r" */
	while (from < to) {
		size_t want = to - from < MIME_CHUNK ? (size_t)(to - from) : MIME_CHUNK;
		ssize_t r = pread(fd, c->chunk, want, (off_t)from);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? 0 : -1;
		for (ssize_t i = 0; i < r; i++) {
			unsigned char ch = c->chunk[i];
			if (ch == '\n') {
				if (last_nl)
					return 1;
				last_nl = 1;
				cr = 0;
			} else if (ch == '\r' && last_nl && !cr) {
				cr = 1;
			} else {
				last_nl = 0;
				cr = 0;
			}
		}
		from += (uint64_t)r;
	}
	return 0;
}

static int mime_junk_reading(struct mime_ctx *c, int fd, uint64_t start, uint64_t end,
                             const uint64_t *all, size_t nall, const char *path, uint64_t depth)
{
	/* Only the first dropped line of each header block ends it: the lines after it
	 * are then body lines, and a line end inserted among them would change the body. */
	uint64_t junk[MIME_JUNK_MAX];
	size_t nj = 0;
	for (size_t i = 0; i < nall; i++) {
		int sep = nj == 0 ? 1 : mime_has_empty_line(c, fd, junk[nj - 1], all[i]);
		if (sep < 0)
			return mime_fail(c, "read", "message");
		if (sep)
			junk[nj++] = all[i];
	}
	uint64_t only[MIME_JUNK_MAX], pos = start;
	int tfd = mime_tmpfile(c);
	if (tfd < 0)
		return -1;
	for (size_t i = 0; i <= nj; i++) {
		uint64_t to = i < nj ? junk[i] : end;
		while (pos < to) {
			size_t want = to - pos < MIME_CHUNK ? (size_t)(to - pos) : MIME_CHUNK;
			ssize_t r = pread(fd, c->chunk, want, (off_t)pos);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0 || write_all(tfd, c->chunk, (size_t)r) < 0) {
				if (r == 0)
					errno = EIO;
				mime_fail(c, "copy", "temporary file");
				close(tfd);
				return -1;
			}
			pos += (uint64_t)r;
		}
		if (i < nj) {
			if (write_all(tfd, "\n", 1) < 0) {
				mime_fail(c, "write", "temporary file");
				close(tfd);
				return -1;
			}
			/* the body after inserted line end i starts right after it */
			only[i] = junk[i] - start + i + 1;
		}
	}
	GMimeMessage *msg;
	uint64_t stop;
	int pr = mime_parse_fd(c, tfd, 0, end - start + nj, NULL, 0, &msg, &stop);
	close(tfd); /* the parse holds its own dup */
	if (pr != 0)
		return pr < 0 ? -1 : 0;
	c->only = only;
	c->nonly = nj;
	c->in_alt = 1;
	int rc = mime_walk(c, g_mime_message_get_mime_part(msg), path, 1, depth);
	c->in_alt = 0;
	c->only = NULL;
	c->nonly = 0;
	g_object_unref(msg);
	return rc;
}

/* Parse fd [start, end) as a message and walk it as the body at path, depth: 0, 1 if it
 * is not a message (nothing written), -1 on an error. */
int mime_source(struct mime_ctx *c, int fd, uint64_t start, uint64_t end, const char *path,
                uint64_t depth)
{
	GMimeMessage *msg = NULL;
	c->njunk = 0;
	c->collect = !c->in_alt;
	c->reparsed = 0;
	int pr = mime_parse(c, fd, start, end, &msg);
	c->collect = 0;
	if (pr != 0)
		return pr;
	/* Offsets in this tree are message file offsets only when it was parsed from the
	 * message file itself, in one pass. */
	int was_direct = c->direct;
	c->direct = fd == c->msg_fd && !c->in_alt && !c->reparsed;
	GMimeObject *body = g_mime_message_get_mime_part(msg);
	if (body == NULL) {
		g_object_unref(msg);
		return 1;
	}
	/* a nested source collects its own: keep ours */
	uint64_t junk[MIME_JUNK_MAX];
	size_t nj = c->njunk;
	memcpy(junk, c->junk, nj * sizeof junk[0]);
	int rc = mime_walk(c, body, path, 1, depth);
	c->direct = was_direct;
	if (rc == 0 && nj > 0 && !c->in_alt && !c->stop)
		rc = mime_junk_reading(c, fd, start, end, junk, nj, path, depth);
	g_object_unref(msg);
	return rc;
}

/* A message/rfc822 (news, global) that GMime kept as an encoded leaf: decode it into a
 * temporary file, parse that, and walk it as the body of this part. If the decoded bytes
 * are not a message, they are a leaf like any other. */
int mime_encoded_message(struct mime_ctx *c, GMimePart *part, const char *path,
                         const char *leafpath, uint64_t depth, int enc_override)
{
	GMimeDataWrapper *w = g_mime_part_get_content(part);
	GMimeStream *s = w ? g_mime_data_wrapper_get_stream(w) : NULL;
	if (s == NULL)
		return mime_leaf(c, GMIME_OBJECT(part), leafpath);
	if (depth + 1 > c->lim->max_depth) {
		manifest_add_unscannable(c->m, MIME_OVER("max_depth"));
		return 0;
	}
	int fd = mime_tmpfile(c);
	if (fd < 0)
		return -1;
	int rc = -1;
	GMimeStream *out = g_mime_stream_fs_new(fd); /* owns fd */
	g_mime_stream_fs_set_owner(GMIME_STREAM_FS(out), TRUE);
	GMimeContentEncoding enc = enc_override == MIME_ENC_GMIME
	                               ? g_mime_data_wrapper_get_encoding(w)
	                               : (GMimeContentEncoding)enc_override;
	GMimeStream *in = mime_decoder(s, enc);
	/* never larger than the encoded text, itself inside the message: bounded */
	if (g_mime_stream_write_to_stream(in, out) < 0 || g_mime_stream_flush(out) < 0) {
		int e = errno ? errno : EIO;
		snprintf(c->reason, c->rlen, "decode attached message at %s: %s", path,
		         strerror(e));
		errno = e;
		goto out;
	}
	gint64 len = g_mime_stream_tell(out);
	struct mime_scan scan;
	if (mime_prescan(fd, NULL, (uint64_t)len, mime_budget(c->lim), NULL, &scan, c->chunk) < 0) {
		mime_fail(c, "read", "temporary file");
		goto out;
	}
	if (scan.why)
		manifest_add_unscannable(c->m, scan.why);
	int pr = len > 0 ? mime_source(c, fd, 0, scan.cut, path, depth + 1) : 1;
	if (pr < 0)
		goto out;
	rc = 0;
	if (pr > 0) /* not a message after all: scan the decoded bytes as they are */
		rc = mime_leaf_enc(c, GMIME_OBJECT(part), leafpath, enc_override,
		                   g_mime_content_encoding_to_string(enc));
out:
	g_object_unref(in);
	g_object_unref(out);
	return rc;
}
