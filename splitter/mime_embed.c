/*
 * mime_embed - payloads embedded in decoded text (uuencode, yEnc, BinHex 4.0): a
 * line-oriented state machine that opens a part of its own for each payload it finds.
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

/* ---- embedded payloads: uuencode, yEnc, BinHex 4.0 --------------------------------- */

static const char mime_binhex_alpha[] =
    "!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr";
static const char mime_binhex_mark[] = "(This file must be converted with BinHex 4.0)";

void mime_embed_init(struct mime_embed *e, const char *path)
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

int mime_embed_feed(struct mime_ctx *c, struct mime_embed *e, const char *p, size_t n)
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
int mime_embed_finish(struct mime_ctx *c, struct mime_embed *e)
{
	int rc = 0;
	if (e->st != EMB_BINHEX && e->len > 0)
		rc = mime_embed_line(c, e);
	e->len = 0;
	if (e->st != EMB_IDLE && mime_embed_close(c, e) < 0)
		rc = -1;
	return rc;
}

void mime_embed_abort(struct mime_embed *e)
{
	mime_out_abort(&e->out);
	e->st = EMB_IDLE;
}

/* An embedded part cut short by a limit: keep what was written and record its size and
 * hash, so the manifest always describes the file that is there (the limit's mark already
 * makes the message unscannable). */
int mime_embed_cut(struct mime_ctx *c, struct mime_embed *e)
{
	int rc = mime_out_close(c, &e->out);
	mime_out_reset(&e->out);
	e->st = EMB_IDLE;
	return rc;
}
