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
 */
#include "mime.h"

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

/* Read and decode in chunks of this size: the only per-part buffer. */
#define MIME_CHUNK 65536
/* Longest line the embedded-payload scanner keeps; the rest of a longer line is still
 * decoded inside a yEnc block and ignored elsewhere (no marker line is that long). */
#define MIME_LINE_MAX 1024
/* Bound on the manifest fields copied from headers (the manifest escapes at most 4096
 * input bytes of a value anyway). */
#define MIME_FIELD_MAX    256
#define MIME_FILENAME_MAX 4096
/* Header block read for mime_envelope_from_headers. */
#define MIME_ENV_HEADER_MAX (1024 * 1024)
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

#define MIME_OVER(what) "over limit (" what ")"
/* Conflicting Content-Type / Content-Transfer-Encoding headers: at most this many other
 * readings per part and per message (each costs a parse or a decode of the part). */
#define MIME_ALT_PER_PART 3
#define MIME_ALT_MAX      16
#define MIME_AMBIGUOUS    "ambiguous structure (too many conflicting headers)"
#define MIME_JUNK_MAX     8
/* Readings of one multipart that other mail readers make and GMime does not (see
 * mime_multipart_ambiguous, mime_other_delimiters): marked, or extracted. */
#define MIME_AMB_BOUNDARY "ambiguous structure (conflicting boundary parameters)"
#define MIME_AMB_CT       "ambiguous structure (conflicting Content-Type headers on a multipart)"
/* Values of one parameter collected from one header value (more are not looked at: a
 * header with this many is ambiguous anyway). */
#define MIME_PARAM_VALUES 8
#define MIME_UNPARSED     "unparsed data (the MIME parser stopped before the end)"
/* Boundaries longer than GMime can match (its read buffer is 4 KiB); RFC 2046 allows 70. */
#define MIME_LONG_BOUNDARY 1000

struct mime_ctx {
	int dirfd;
	const struct mime_limits *lim;
	struct manifest *m;
	GMimeParserOptions *opts;
	uint64_t content_max;  /* parts we may add besides the raw part */
	uint64_t total;        /* decoded bytes written to all parts but the raw one */
	uint64_t total_max;    /* the bound on total: max_total_size or max_expansion */
	const char *total_why; /* its unscannable reason */
	uint64_t unchecked;    /* bytes written since free space was last checked */
	int stop;              /* max_total_size reached: nothing more is written */
	unsigned tmp_seq;
	int in_alt;    /* walking an alternative view: no alternatives of alternatives */
	int in_mp_alt; /* walking a multipart's other reading: none of that reading's own */
	unsigned alts; /* alternative views made so far */
	/* offsets of header block lines GMime dropped (GMIME_CRIT_INVALID_HEADER_NAME) in
	 * the parse being collected, and, while walking the reading that makes them bodies,
	 * the stream offsets where those bodies start (only leaves starting there are
	 * written) */
	int collect;
	uint64_t junk[MIME_JUNK_MAX];
	size_t njunk;
	const uint64_t *only;
	size_t nonly;
	char *reason;
	size_t rlen;
	unsigned char *chunk; /* MIME_CHUNK bytes */
	/* The message file mem_fd whole in memory (up to lim->mem_max bytes), or NULL. Every
	 * stream made on it is a window that does not own the bytes: they stay until
	 * mime_extract returns, after every GMime object made from them is gone. */
	GMimeStream *mem;
	int mem_fd;
	/* Entity ranges for strip (docs/MANIFEST.md, entity_*): the message file, its bytes
	 * when in memory, whether the tree being walked was parsed from that file as it is
	 * (offsets are file offsets: not a decoded attachment, no inserted line end, no
	 * other reading), the boundary of the multipart whose child is being walked, and
	 * the range of the leaf about to be written. */
	int msg_fd;
	const unsigned char *msg_mem;
	uint64_t msg_size;
	int direct;
	int reparsed;
	const char *parent_bnd;
	int ent_valid;
	uint64_t ent_start, ent_end;
	char ent_sha[65];
};

/* One part file being written. */
struct mime_out {
	int fd; /* -1: not open (skipped by a limit, or closed) */
	unsigned index;
	uint64_t size;
	int full; /* a size limit was hit: the rest is dropped */
	struct sha256_ctx sha;
};

enum mime_emb_state { EMB_IDLE, EMB_UU, EMB_YENC, EMB_BINHEX };

/* The embedded-payload scanner: a line-oriented state machine fed with decoded text. */
struct mime_embed {
	enum mime_emb_state st;
	const char *path;
	char line[MIME_LINE_MAX];
	size_t len;
	int overflow; /* the current line is longer than line[] */
	int cont;     /* yEnc: the start of this line was already decoded */
	struct mime_out out;
	/* yEnc */
	int ystate;
	guint32 pcrc, crc;
	/* BinHex 4.0 */
	int bh_colon; /* 0: waiting for the ':' that starts the data */
	guint32 bh_bits;
	int bh_nbits;
	int bh_rle; /* the previous byte was the 0x90 run marker */
	int bh_have_last;
	unsigned char bh_last;
	unsigned char bh_hdr[255 + 22];
	size_t bh_hlen;
	int bh_phase;     /* 0 header, 1 data fork, 2 done */
	uint64_t bh_left; /* data fork bytes still to come */
	unsigned char bh_buf[4096];
	size_t bh_blen;
};

static int mime_walk(struct mime_ctx *c, GMimeObject *obj, const char *path, int is_body,
                     uint64_t depth);

static int mime_fail(struct mime_ctx *c, const char *what, const char *name)
{
	int e = errno;
	snprintf(c->reason, c->rlen, "%s %s: %s", what, name, strerror(e));
	errno = e;
	return -1;
}

/* ---- sha256 ---------------------------------------------------------------------- */

/* Nettle's sha256 rather than GChecksum: it uses the CPU's SHA instructions where there
 * are some, 4x GLib's speed here, and every byte of every part is hashed. (OpenSSL is as
 * fast but costs over a millisecond of loading and set-up in every process.) */
static void mime_sha_hex(struct sha256_ctx *x, char hex[65])
{
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_digest(x, sizeof d, d);
	for (size_t i = 0; i < sizeof d; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* ---- part files ------------------------------------------------------------------ */

static void mime_out_reset(struct mime_out *o)
{
	o->fd = -1;
	o->index = 0;
	o->size = 0;
	o->full = 0;
}

static int mime_limit_parts(struct mime_ctx *c)
{
	if (c->stop)
		return 1;
	if (c->m->n_parts >= c->content_max) {
		manifest_add_unscannable(c->m, MIME_OVER("max_parts"));
		return 1;
	}
	return 0;
}

/* Copy at most max bytes of s, lower-cased if lower. */
static char *mime_field(const char *s, size_t max, int lower)
{
	if (s == NULL)
		return xstrdup("");
	size_t n = strnlen(s, max);
	char *p = xstrndup(s, n);
	if (lower)
		for (char *q = p; *q; q++)
			if (*q >= 'A' && *q <= 'Z')
				*q = (char)(*q - 'A' + 'a');
	return p;
}

/* Add a manifest entry and create its file. 0: open; 1: skipped by a limit (o->fd is
 * -1, the unscannable mark is set); -1: I/O error. */
static int mime_out_open(struct mime_ctx *c, struct mime_out *o, const char *path,
                         enum part_found found, const char *type, const char *charset,
                         const char *cte, const char *filename)
{
	mime_out_reset(o);
	if (mime_limit_parts(c))
		return 1;
	const char *fn = filename ? filename : "";
	struct manifest_part *p =
	    manifest_add(c->m, path, found, type, charset, cte, fn, strnlen(fn, MIME_FILENAME_MAX));
	char name[16];
	manifest_part_name(p->index, name);
	/* O_EXCL|O_NOFOLLOW: a leftover or planted name is an error, never followed. */
	o->fd = openat(c->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
	if (o->fd < 0)
		return mime_fail(c, "create", name);
	o->index = p->index;
	sha256_init(&o->sha);
	return 0;
}

/* Write decoded bytes, enforcing max_part_size and max_total_size before writing. */
static int mime_out_write(struct mime_ctx *c, struct mime_out *o, const void *data, size_t n)
{
	if (o->fd < 0 || o->full || n == 0)
		return 0;
	const struct mime_limits *lim = c->lim;
	uint64_t allow = n;
	if (o->size + allow > lim->max_part_size) {
		allow = lim->max_part_size > o->size ? lim->max_part_size - o->size : 0;
		o->full = 1;
		manifest_add_unscannable(c->m, MIME_OVER("max_part_size"));
	}
	if (c->total + allow > c->total_max) {
		allow = c->total_max > c->total ? c->total_max - c->total : 0;
		o->full = 1;
		c->stop = 1;
		manifest_add_unscannable(c->m, c->total_why);
	}
	if (allow == 0)
		return 0;
	/* Count what we write against the free space, not only against the limits: a full
	 * disk must defer this message (ENOSPC: the caller pauses intake and retries it),
	 * not fill the spool that every other message needs. */
	if (lim->min_free > 0 && c->unchecked + allow > MIME_SPACE_STEP) {
		struct statvfs vs;
		if (fstatvfs(c->dirfd, &vs) < 0)
			return mime_fail(c, "statvfs", "work directory");
		uint64_t avail = (uint64_t)vs.f_bavail * (uint64_t)vs.f_frsize;
		if (avail < lim->min_free + allow) {
			errno = ENOSPC;
			return mime_fail(c, "write parts in", "work directory");
		}
		c->unchecked = 0;
	}
	c->unchecked += allow;
	if (write_all(o->fd, data, (size_t)allow) < 0) {
		char name[16];
		manifest_part_name(o->index, name);
		return mime_fail(c, "write", name);
	}
	sha256_update(&o->sha, (size_t)allow, data);
	o->size += allow;
	c->total += allow;
	return 0;
}

static int mime_out_close(struct mime_ctx *c, struct mime_out *o)
{
	if (o->fd < 0)
		return 0;
	struct manifest_part *p = &c->m->parts[o->index - 1];
	p->size = o->size;
	mime_sha_hex(&o->sha, p->sha256);
	int rc = close(o->fd);
	o->fd = -1;
	if (rc < 0) {
		char name[16];
		manifest_part_name(o->index, name);
		return mime_fail(c, "close", name);
	}
	return 0;
}

/* On an error path: close without caring (the caller retries from scratch). */
static void mime_out_abort(struct mime_out *o)
{
	if (o->fd >= 0)
		close(o->fd);
	mime_out_reset(o);
}

/* ---- embedded payloads: uuencode, yEnc, BinHex 4.0 --------------------------------- */

static const char mime_binhex_alpha[] =
    "!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr";
static const char mime_binhex_mark[] = "(This file must be converted with BinHex 4.0)";

static void mime_embed_init(struct mime_embed *e, const char *path)
{
	memset(e, 0, sizeof *e);
	e->st = EMB_IDLE;
	e->path = path;
	mime_out_reset(&e->out);
}

/* "begin NNN name": mode of 3 or 4 octal digits, a non-empty name (begin-base64 is not
 * uuencode). Returns the name or NULL. */
static const char *mime_uu_begin(const char *l, size_t n)
{
	if (n < 6 || memcmp(l, "begin ", 6) != 0)
		return NULL;
	size_t i = 5, d = 0;
	while (i < n && l[i] == ' ')
		i++;
	while (i < n && l[i] >= '0' && l[i] <= '7')
		i++, d++;
	if ((d != 3 && d != 4) || i >= n || l[i] != ' ')
		return NULL;
	while (i < n && l[i] == ' ')
		i++;
	return i < n ? l + i : NULL;
}

static int mime_embed_close(struct mime_ctx *c, struct mime_embed *e)
{
	int rc = 0;
	if (e->st == EMB_BINHEX && e->bh_blen > 0) {
		rc = mime_out_write(c, &e->out, e->bh_buf, e->bh_blen);
		e->bh_blen = 0;
	}
	if (mime_out_close(c, &e->out) < 0)
		rc = -1;
	e->st = EMB_IDLE;
	return rc;
}

/* One uuencoded line, decoded like Python's binascii.a2b_uu: the first character gives
 * the byte count, missing characters count as zero bits. */
static int mime_uu_line(struct mime_ctx *c, struct mime_embed *e, const char *l, size_t n)
{
	unsigned char outb[64];
	size_t want = (size_t)(((unsigned char)l[0] - 32) & 63), got = 0;
	size_t i = 1;
	while (got < want) {
		unsigned v[4];
		for (int k = 0; k < 4; k++, i++)
			v[k] = i < n ? (unsigned)(((unsigned char)l[i] - 32) & 63) : 0;
		unsigned char b[3] = {(unsigned char)(v[0] << 2 | v[1] >> 4),
		                      (unsigned char)(v[1] << 4 | v[2] >> 2),
		                      (unsigned char)(v[2] << 6 | v[3])};
		for (int k = 0; k < 3 && got < want; k++)
			outb[got++] = b[k];
	}
	return mime_out_write(c, &e->out, outb, got);
}

static int mime_yenc_data(struct mime_ctx *c, struct mime_embed *e, const char *l, size_t n)
{
	unsigned char outb[MIME_LINE_MAX];
	size_t k =
	    g_mime_ydecode_step((const unsigned char *)l, n, outb, &e->ystate, &e->pcrc, &e->crc);
	return mime_out_write(c, &e->out, outb, k);
}

static int mime_binhex_flush(struct mime_ctx *c, struct mime_embed *e)
{
	int rc = mime_out_write(c, &e->out, e->bh_buf, e->bh_blen);
	e->bh_blen = 0;
	return rc;
}

/* One byte after 6-bit and run-length decoding: the header (name length, name, version,
 * type, creator, flags, data length, resource length, crc), then the data fork, which is
 * what becomes the part; the resource fork and the CRCs are not needed for scanning. */
static int mime_binhex_byte(struct mime_ctx *c, struct mime_embed *e, unsigned char b)
{
	if (e->bh_phase == 0) {
		e->bh_hdr[e->bh_hlen++] = b;
		size_t need = (size_t)e->bh_hdr[0] + 22;
		if (e->bh_hlen < need)
			return 0;
		size_t nl = e->bh_hdr[0];
		const unsigned char *d = e->bh_hdr + nl + 12;
		e->bh_left =
		    (uint64_t)d[0] << 24 | (uint64_t)d[1] << 16 | (uint64_t)d[2] << 8 | d[3];
		char name[256];
		memcpy(name, e->bh_hdr + 1, nl);
		name[nl] = '\0';
		e->bh_phase = e->bh_left ? 1 : 2;
		int r = mime_out_open(c, &e->out, e->path, FOUND_BINHEX, "application/octet-stream",
		                      "", "", name);
		if (r < 0)
			return -1;
		return e->bh_phase == 2 ? mime_out_close(c, &e->out) : 0;
	}
	if (e->bh_phase != 1)
		return 0;
	e->bh_buf[e->bh_blen++] = b;
	if (--e->bh_left == 0) {
		e->bh_phase = 2;
		if (mime_binhex_flush(c, e) < 0)
			return -1;
		return mime_out_close(c, &e->out);
	}
	if (e->bh_blen == sizeof e->bh_buf)
		return mime_binhex_flush(c, e);
	return 0;
}

static int mime_binhex_rle(struct mime_ctx *c, struct mime_embed *e, unsigned char b)
{
	if (e->bh_rle) {
		e->bh_rle = 0;
		if (b == 0) {
			e->bh_last = 0x90;
			e->bh_have_last = 1;
			return mime_binhex_byte(c, e, 0x90);
		}
		/* a run repeats the previous byte; nothing to do once the data fork is done */
		for (unsigned k = 1; k < b && e->bh_have_last && e->bh_phase < 2; k++)
			if (mime_binhex_byte(c, e, e->bh_last) < 0)
				return -1;
		return 0;
	}
	if (b == 0x90) {
		e->bh_rle = 1;
		return 0;
	}
	e->bh_last = b;
	e->bh_have_last = 1;
	return mime_binhex_byte(c, e, b);
}

/* Feed BinHex characters; returns how many were consumed (the block ends at the closing
 * ':' or at a character outside the alphabet), or -1 on an I/O error. */
static ssize_t mime_binhex_feed(struct mime_ctx *c, struct mime_embed *e, const char *p, size_t n)
{
	static signed char map[256];
	static int map_ready;
	if (!map_ready) {
		memset(map, -1, sizeof map);
		for (int i = 0; mime_binhex_alpha[i]; i++)
			map[(unsigned char)mime_binhex_alpha[i]] = (signed char)i;
		map_ready = 1;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)p[i];
		if (!e->bh_colon) {
			if (ch == ':')
				e->bh_colon = 1;
			continue;
		}
		if (ch == '\r' || ch == '\n' || ch == '\t' || ch == ' ')
			continue;
		if (ch == ':' || map[ch] < 0) {
			if (mime_embed_close(c, e) < 0)
				return -1;
			return (ssize_t)i + 1;
		}
		e->bh_bits = (e->bh_bits << 6 | (guint32)map[ch]) & 0xffffff;
		e->bh_nbits += 6;
		if (e->bh_nbits >= 8) {
			e->bh_nbits -= 8;
			if (mime_binhex_rle(c, e, (unsigned char)(e->bh_bits >> e->bh_nbits)) < 0)
				return -1;
		}
	}
	return (ssize_t)n;
}

static void mime_binhex_start(struct mime_embed *e)
{
	e->st = EMB_BINHEX;
	e->bh_colon = 0;
	e->bh_bits = 0;
	e->bh_nbits = 0;
	e->bh_rle = 0;
	e->bh_have_last = 0;
	e->bh_hlen = 0;
	e->bh_phase = 0;
	e->bh_left = 0;
	e->bh_blen = 0;
	mime_out_reset(&e->out);
}

/* A complete line (without its "\n") seen outside BinHex data. */
static int mime_embed_line(struct mime_ctx *c, struct mime_embed *e)
{
	const char *l = e->line;
	size_t n = e->len;
	if (n > 0 && l[n - 1] == '\r')
		n--;
	switch (e->st) {
	case EMB_IDLE: {
		if (e->overflow)
			return 0;
		const char *name = mime_uu_begin(l, n);
		if (name) {
			char fn[MIME_LINE_MAX];
			memcpy(fn, name, (size_t)(l + n - name));
			fn[l + n - name] = '\0';
			e->st = EMB_UU;
			return mime_out_open(c, &e->out, e->path, FOUND_UUENCODE,
			                     "application/octet-stream", "", "", fn) < 0
			           ? -1
			           : 0;
		}
		if (n >= 8 && memcmp(l, "=ybegin ", 8) == 0) {
			char fn[MIME_LINE_MAX];
			const char *nm = memmem(l, n, "name=", 5);
			size_t fl = nm ? (size_t)(l + n - nm - 5) : 0;
			memcpy(fn, nm ? nm + 5 : "", fl);
			fn[fl] = '\0';
			e->st = EMB_YENC;
			e->ystate = GMIME_YDECODE_STATE_INIT;
			e->pcrc = e->crc = GMIME_YENCODE_CRC_INIT;
			return mime_out_open(c, &e->out, e->path, FOUND_YENC,
			                     "application/octet-stream", "", "", fn) < 0
			           ? -1
			           : 0;
		}
		const char *mk = memmem(l, n, mime_binhex_mark, sizeof mime_binhex_mark - 1);
		if (mk) {
			mime_binhex_start(e);
			const char *rest = mk + sizeof mime_binhex_mark - 1;
			/* the data usually starts on the next line, rarely on this one */
			ssize_t used = mime_binhex_feed(c, e, rest, (size_t)(l + n - rest));
			return used < 0 ? -1 : 0;
		}
		return 0;
	}
	case EMB_UU: {
		size_t a = 0, b = n;
		while (a < b && (l[a] == ' ' || l[a] == '\t'))
			a++;
		while (b > a && (l[b - 1] == ' ' || l[b - 1] == '\t'))
			b--;
		/* "end", or an "end" cut short: decoding it as data would add NULs */
		if ((b - a == 3 && memcmp(l + a, "end", 3) == 0) ||
		    (b - a == 2 && memcmp(l + a, "en", 2) == 0) || (b - a == 1 && l[a] == 'e'))
			return mime_embed_close(c, e);
		if (n == 0 || (n == 1 && l[0] == '`'))
			return 0;
		return mime_uu_line(c, e, l, n);
	}
	case EMB_YENC:
		if (!e->cont && n >= 5 && memcmp(l, "=yend", 5) == 0)
			return mime_embed_close(c, e);
		if (!e->cont && n >= 6 && memcmp(l, "=ypart", 6) == 0)
			return 0;
		/* an escape does not run over a line end */
		e->ystate &= ~GMIME_YDECODE_STATE_ESCAPE;
		return mime_yenc_data(c, e, l, n);
	case EMB_BINHEX:
		break;
	}
	return 0;
}

static int mime_embed_feed(struct mime_ctx *c, struct mime_embed *e, const char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (e->st == EMB_BINHEX) {
			ssize_t used = mime_binhex_feed(c, e, p + i, n - i);
			if (used < 0)
				return -1;
			i += (size_t)used;
			if (e->st != EMB_BINHEX) {
				/* the rest of the line with the closing ':' is not a marker line */
				e->len = 0;
				e->overflow = 1;
			}
			continue;
		}
		const char *nl = memchr(p + i, '\n', n - i);
		size_t take = nl ? (size_t)(nl - (p + i)) : n - i;
		size_t room = sizeof e->line - e->len;
		if (take > room) {
			if (e->st == EMB_YENC && !(e->len >= 2 && memcmp(e->line, "=y", 2) == 0)) {
				/* a long yEnc data line: decode what we have and go on */
				if (mime_embed_line(c, e) < 0)
					return -1;
				e->cont = 1;
				e->len = 0;
				room = sizeof e->line;
			} else {
				e->overflow = 1;
			}
		}
		size_t keep = take < room ? take : room;
		memcpy(e->line + e->len, p + i, keep);
		e->len += keep;
		i += take;
		if (nl) {
			i++;
			if (mime_embed_line(c, e) < 0)
				return -1;
			e->len = 0;
			e->overflow = 0;
			e->cont = 0;
		}
	}
	return 0;
}

/* End of the text: a last line without "\n", and a block without its end marker. */
static int mime_embed_finish(struct mime_ctx *c, struct mime_embed *e)
{
	int rc = 0;
	if (e->st != EMB_BINHEX && e->len > 0)
		rc = mime_embed_line(c, e);
	e->len = 0;
	if (e->st != EMB_IDLE && mime_embed_close(c, e) < 0)
		rc = -1;
	return rc;
}

static void mime_embed_abort(struct mime_embed *e)
{
	mime_out_abort(&e->out);
	e->st = EMB_IDLE;
}

/* An embedded part cut short by a limit: keep what was written and record its size and
 * hash, so the manifest always describes the file that is there (the limit's mark already
 * makes the message unscannable). */
static int mime_embed_cut(struct mime_ctx *c, struct mime_embed *e)
{
	int rc = mime_out_close(c, &e->out);
	mime_out_reset(&e->out);
	e->st = EMB_IDLE;
	return rc;
}

/* ---- decoding one leaf ------------------------------------------------------------- */

/* Copy the stream src through the transfer decoding enc into o (and into the embedded
 * scanner if emb). src is read from its start. */
static int mime_decode_stream(struct mime_ctx *c, GMimeStream *src, GMimeContentEncoding enc,
                              struct mime_out *o, struct mime_embed *emb)
{
	GMimeStream *in = src;
	int rc = 0;
	g_mime_stream_reset(src);
	g_object_ref(src);
	if (enc == GMIME_CONTENT_ENCODING_BASE64 || enc == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE ||
	    enc == GMIME_CONTENT_ENCODING_UUENCODE) {
		GMimeFilter *f = g_mime_filter_basic_new(enc, FALSE);
		in = g_mime_stream_filter_new(src);
		g_mime_stream_filter_add(GMIME_STREAM_FILTER(in), f);
		g_object_unref(f);
		g_object_unref(src);
	}
	/* A filter stream hands out at most 4 KiB of its source per read: gather the decoded
	 * bytes in the chunk and write them in one call when it is nearly full or at the end,
	 * not a write(2) for every 3 KiB of base64. */
	size_t fill = 0;
	for (;;) {
		int end = 0;
		ssize_t r = g_mime_stream_read(in, (char *)c->chunk + fill, MIME_CHUNK - fill);
		if (r > 0) {
			fill += (size_t)r;
		} else if (g_mime_stream_eos(in)) {
			end = 1;
		} else if (r < 0) {
			int e = errno ? errno : EIO;
			snprintf(c->reason, c->rlen, "read message: %s", strerror(e));
			errno = e;
			rc = -1;
			break;
		}
		if (fill > 0 && (end || MIME_CHUNK - fill < MIME_CHUNK / 8)) {
			if (mime_out_write(c, o, c->chunk, fill) < 0 ||
			    (emb && mime_embed_feed(c, emb, (const char *)c->chunk, fill) < 0)) {
				rc = -1;
				break;
			}
			fill = 0;
			/* the rest is over a limit: stop reading, not just writing */
			if (o->full || c->stop)
				break;
		}
		if (end)
			break;
	}
	g_object_unref(in);
	return rc;
}

static int mime_is_text(const char *type)
{
	return strncmp(type, "text/", 5) == 0;
}

static int mime_is_message_type(GMimeContentType *ct)
{
	static const char *subs[] = {"rfc822", "rfc2822", "news", "global"};
	if (ct == NULL || g_ascii_strcasecmp(g_mime_content_type_get_media_type(ct), "message"))
		return 0;
	const char *sub = g_mime_content_type_get_media_subtype(ct);
	for (size_t i = 0; i < ARRAY_LEN(subs); i++)
		if (sub && g_ascii_strcasecmp(sub, subs[i]) == 0)
			return 1;
	return 0;
}

/* Write the bytes p[0..n) as a part of its own (preambles and epilogues). */
static int mime_write_text(struct mime_ctx *c, const char *path, enum part_found found,
                           const char *text)
{
	struct mime_out o;
	struct mime_embed emb;
	size_t n = strlen(text);
	int r = mime_out_open(c, &o, path, found, "text/plain", "", "", "");
	if (r != 0)
		return r < 0 ? -1 : 0;
	mime_embed_init(&emb, path);
	if (mime_out_write(c, &o, text, n) < 0 ||
	    (!o.full && !c->stop &&
	     (mime_embed_feed(c, &emb, text, n) < 0 || mime_embed_finish(c, &emb) < 0))) {
		mime_embed_abort(&emb);
		mime_out_abort(&o);
		return -1;
	}
	if (mime_embed_cut(c, &emb) < 0) { /* only open if cut short by a limit */
		mime_out_abort(&o);
		return -1;
	}
	return mime_out_close(c, &o);
}

/* A leaf: decoded with the transfer encoding GMime chose, or with enc (and the header
 * value cte_value) when enc is not MIME_ENC_GMIME. */
#define MIME_ENC_GMIME (-1)
static int mime_leaf_enc(struct mime_ctx *c, GMimeObject *obj, const char *path, int enc,
                         const char *cte_value)
{
	GMimeContentType *ct = g_mime_object_get_content_type(obj);
	char *mt = ct ? g_mime_content_type_get_mime_type(ct) : NULL;
	char *type = mime_field(mt ? mt : "text/plain", MIME_FIELD_MAX, 1);
	g_free(mt);
	char *charset =
	    mime_field(g_mime_object_get_content_type_parameter(obj, "charset"), MIME_FIELD_MAX, 1);
	char *cte = mime_field(enc == MIME_ENC_GMIME
	                           ? g_mime_object_get_header(obj, "Content-Transfer-Encoding")
	                           : cte_value,
	                       MIME_FIELD_MAX, 1);
	g_strstrip(cte);
	const char *filename =
	    GMIME_IS_PART(obj) ? g_mime_part_get_filename(GMIME_PART(obj)) : NULL;
	struct mime_out o;
	struct mime_embed emb;
	/* The entity range belongs to this leaf only, not to an embedded payload found in
	 * it or to another reading of it: taken once, here. */
	int ent = c->ent_valid;
	c->ent_valid = 0;
	int rc = mime_out_open(c, &o, path, FOUND_LEAF, type, charset, cte, filename);
	if (rc == 0 && ent) {
		struct manifest_part *mp = &c->m->parts[o.index - 1];
		mp->has_entity = 1;
		mp->entity_start = c->ent_start;
		mp->entity_end = c->ent_end;
		memcpy(mp->entity_sha256, c->ent_sha, sizeof mp->entity_sha256);
	}
	if (rc != 0) {
		rc = rc < 0 ? -1 : 0;
		goto out;
	}
	mime_embed_init(&emb, path);
	GMimeDataWrapper *w = GMIME_IS_PART(obj) ? g_mime_part_get_content(GMIME_PART(obj)) : NULL;
	GMimeStream *s = w ? g_mime_data_wrapper_get_stream(w) : NULL;
	GMimeContentEncoding e = enc == MIME_ENC_GMIME
	                             ? (w ? g_mime_data_wrapper_get_encoding(w) : 0)
	                             : (GMimeContentEncoding)enc;
	if (s && mime_decode_stream(c, s, e, &o, mime_is_text(type) ? &emb : NULL) < 0) {
		rc = -1;
	} else if (!o.full && !c->stop && mime_embed_finish(c, &emb) < 0) {
		rc = -1;
	}
	if (rc < 0)
		mime_embed_abort(&emb);
	else if (mime_embed_cut(c, &emb) < 0)
		rc = -1;
	if (rc < 0)
		mime_out_abort(&o);
	else
		rc = mime_out_close(c, &o);
out:
	free(type);
	free(charset);
	free(cte);
	return rc;
}

static int mime_leaf(struct mime_ctx *c, GMimeObject *obj, const char *path)
{
	return mime_leaf_enc(c, obj, path, MIME_ENC_GMIME, NULL);
}

/* ---- parsing ----------------------------------------------------------------------- */

/* What mime_prescan found: where GMime must stop, and why. */
struct mime_scan {
	uint64_t cut;    /* parse only [0, cut) */
	const char *why; /* the unscannable reason if cut < size */
};

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

static int mime_prescan(int fd, const unsigned char *mem, uint64_t size, uint64_t budget,
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
static int mime_parse_fd(struct mime_ctx *c, int fd, uint64_t start, uint64_t end,
                         const uint64_t *ins, size_t nins, GMimeMessage **msg, uint64_t *stop)
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
static int mime_first_header(int fd, uint64_t end, unsigned char *buf, uint64_t *off)
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

static uint64_t mime_budget(const struct mime_limits *lim)
{
	uint64_t per = lim->max_parts < UINT64_MAX / MIME_OBJECTS_PER_PART
	                   ? lim->max_parts * MIME_OBJECTS_PER_PART
	                   : UINT64_MAX / 2;
	return MIME_OBJECTS_BASE + per;
}

/* An unnamed file in the work directory for a decoded attached message: O_TMPFILE where
 * the filesystem has it, else a dot-name that is unlinked at once. Either way no name
 * from the message is used and nothing is left behind. */
static int mime_tmpfile(struct mime_ctx *c)
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
		int e = errno;
		close(fd);
		errno = e;
		return mime_fail(c, "unlink", name);
	}
	return fd;
}

static void mime_warning(gint64 offset, GMimeParserWarning code, const gchar *item, gpointer data)
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
static int mime_exposed(struct mime_ctx *c, GMimeObject *obj)
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
static int mime_source(struct mime_ctx *c, int fd, uint64_t start, uint64_t end, const char *path,
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
static int mime_encoded_message(struct mime_ctx *c, GMimePart *part, const char *path,
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
	GMimeStream *in = s;
	g_mime_stream_reset(s);
	g_object_ref(s);
	GMimeContentEncoding enc = enc_override == MIME_ENC_GMIME
	                               ? g_mime_data_wrapper_get_encoding(w)
	                               : (GMimeContentEncoding)enc_override;
	if (enc == GMIME_CONTENT_ENCODING_BASE64 || enc == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE ||
	    enc == GMIME_CONTENT_ENCODING_UUENCODE) {
		GMimeFilter *f = g_mime_filter_basic_new(enc, FALSE);
		in = g_mime_stream_filter_new(s);
		g_mime_stream_filter_add(GMIME_STREAM_FILTER(in), f);
		g_object_unref(f);
		g_object_unref(s);
	}
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

static int mime_has_text(const char *s)
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

static int mime_alternatives(struct mime_ctx *c, GMimePart *part, const char *path, int is_body,
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

/* ---- parser differentials ---------------------------------------------------------- */

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
static void mime_multipart_ambiguous(struct mime_ctx *c, GMimeObject *obj, const char *bnd)
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
		int e = errno;
		close(in);
		if (out >= 0)
			close(out);
		errno = e;
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
static int mime_other_names(struct mime_ctx *c, GMimeObject *obj, unsigned idx)
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
static int mime_encoded_multipart(struct mime_ctx *c, GMimeObject *obj, const char *bnd,
                                  const char *path, int is_body, uint64_t depth, int *mine)
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
	/* (the reading of dropped header lines writes only the leaves it exposes) */
	if (c->only)
		return 0;
	if (c->in_mp_alt) {
		manifest_add_unscannable(c->m, MIME_AMBIGUOUS);
		return 0;
	}
	if (!mime_alt_budget(c, mine))
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
static int mime_other_delimiters(struct mime_ctx *c, const char *text, const char *bnd,
                                 const char *path, int is_body, uint64_t depth, int *mine)
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
	if (first == NULL || c->only)
		return 0;
	if (c->in_mp_alt) {
		manifest_add_unscannable(c->m, MIME_AMBIGUOUS);
		return 0;
	}
	if (!mime_alt_budget(c, mine))
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

/* GMime cannot match a boundary longer than its read buffer, and keeps the whole body
 * of such a multipart as its preamble. Split that preamble at the boundary lines here
 * and parse each part on its own (from memory: the preamble already is). Returns 1 if
 * no boundary line was found (the caller keeps the preamble as it is). */
static int mime_split_long(struct mime_ctx *c, const char *body, const char *boundary,
                           const char *path, uint64_t depth)
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
				char sub[4096];
				if (bsnprintf(sub, sizeof sub, path[0] ? "%s.%d" : "%s%d", path,
				              ++idx) < 0)
					return 0;
				GMimeStream *st = g_mime_stream_mem_new_with_buffer(chunk, len);
				GMimeParser *parser = g_mime_parser_new_with_stream(st);
				GMimeObject *obj = g_mime_parser_construct_part(parser, c->opts);
				g_object_unref(parser);
				g_object_unref(st);
				if (obj) {
					rc = mime_walk(c, obj, sub, 0, depth + 1);
					g_object_unref(obj);
				}
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
		char sub[4096];
		if (bsnprintf(sub, sizeof sub, path[0] ? "%s.%d" : "%s%d", path, ++idx) < 0)
			return 0;
		GMimeStream *st = g_mime_stream_mem_new_with_buffer(chunk, (size_t)(end - chunk));
		GMimeParser *parser = g_mime_parser_new_with_stream(st);
		GMimeObject *obj = g_mime_parser_construct_part(parser, c->opts);
		g_object_unref(parser);
		g_object_unref(st);
		if (obj) {
			rc = mime_walk(c, obj, sub, 0, depth + 1);
			g_object_unref(obj);
		}
	}
	return rc;
}

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
static int mime_walk(struct mime_ctx *c, GMimeObject *obj, const char *path, int is_body,
                     uint64_t depth)
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
		int e = errno;
		close(fd);
		errno = e;
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

static GMimeParserOptions *mime_options(void)
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

/* ---- envelope from headers ------------------------------------------------------- */

static void mime_env_collect(InternetAddressList *l, struct envelope *env, int depth)
{
	int n = l ? internet_address_list_length(l) : 0;
	for (int i = 0; i < n && env->n_rcpts < ENV_RCPT_MAX; i++) {
		InternetAddress *a = internet_address_list_get_address(l, i);
		if (INTERNET_ADDRESS_IS_GROUP(a)) {
			/* groups do not nest in RFC 5322; one level is all we follow */
			if (depth == 0)
				mime_env_collect(
				    internet_address_group_get_members(INTERNET_ADDRESS_GROUP(a)),
				    env, depth + 1);
			continue;
		}
		const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a));
		if (addr && addr[0])
			(void)envelope_add_rcpt(env, addr); /* invalid ones are skipped */
	}
}

static const char *mime_env_first(InternetAddressList *l, int depth)
{
	int n = l ? internet_address_list_length(l) : 0;
	for (int i = 0; i < n; i++) {
		InternetAddress *a = internet_address_list_get_address(l, i);
		if (INTERNET_ADDRESS_IS_GROUP(a)) {
			const char *s = depth == 0
			                    ? mime_env_first(internet_address_group_get_members(
			                                         INTERNET_ADDRESS_GROUP(a)),
			                                     1)
			                    : NULL;
			if (s)
				return s;
			continue;
		}
		const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a));
		if (addr && addr[0])
			return addr;
	}
	return NULL;
}

int mime_envelope_from_headers(int msg_fd, struct envelope *env, char *reason, size_t rlen)
{
	mime_init();
	struct buf b;
	buf_init(&b);
	int rc = -1;
	GMimeMessage *msg = NULL;
	GMimeParserOptions *opts = mime_options();
	/* Only the header block: read until the empty line, at most MIME_ENV_HEADER_MAX. */
	char tmp[8192];
	off_t off = 0;
	while (b.len < MIME_ENV_HEADER_MAX) {
		ssize_t r = pread(msg_fd, tmp, sizeof tmp, off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(reason, rlen, "read message: %s", strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		size_t from = b.len > 3 ? b.len - 3 : 0;
		buf_add(&b, tmp, (size_t)r);
		off += r;
		if (memmem(b.data + from, b.len - from, "\n\n", 2) ||
		    memmem(b.data + from, b.len - from, "\n\r\n", 3))
			break;
	}
	buf_add(&b, "\n\n", 2);
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(b.data, b.len);
	GMimeParser *parser = g_mime_parser_new_with_stream(st);
	g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
	msg = g_mime_parser_construct_message(parser, opts);
	g_object_unref(parser);
	g_object_unref(st);
	if (msg == NULL) {
		snprintf(reason, rlen, "no header block");
		goto out;
	}
	const char *sender = NULL;
	InternetAddressList *rp = NULL;
	const char *rpv = g_mime_object_get_header(GMIME_OBJECT(msg), "Return-Path");
	if (rpv) {
		rp = internet_address_list_parse(opts, rpv);
		sender = mime_env_first(rp, 0);
		if (sender == NULL)
			sender = ""; /* "<>": the null sender */
	} else {
		sender = mime_env_first(g_mime_message_get_from(msg), 0);
	}
	if (sender == NULL || envelope_addr_valid(sender) < 0)
		sender = "";
	env->sender = xstrdup(sender);
	if (rp)
		g_object_unref(rp);
	mime_env_collect(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_TO), env, 0);
	mime_env_collect(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_CC), env, 0);
	if (env->n_rcpts == 0) {
		snprintf(reason, rlen, "no recipient in To or Cc");
		envelope_free(env);
		goto out;
	}
	rc = 0;
out:
	if (msg)
		g_object_unref(msg);
	g_mime_parser_options_free(opts);
	buf_free(&b);
	return rc;
}
