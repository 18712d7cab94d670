/*
 * strip - cut MIME entities out of the raw message by the byte ranges the splitter
 * recorded, without parsing the message again.
 *
 * Why ranges and not a MIME walk of our own: a second parser that reads the message
 * differently from the splitter's (GMime) is a bypass. An earlier version walked the
 * multipart structure itself and split Content-Type parameters on every ';', also inside
 * a quoted value: for `foo="z;boundary=Q"; boundary=X` it found a boundary GMime never
 * saw, cut "part 2" inside the text part, and delivered the attachment GMime had found
 * infected. Now the only reading is the splitter's: each leaf that is a child of a
 * multipart carries, in the manifest, the range [entity_start, entity_end) of its
 * headers and body in `message`, and the sha256 of those bytes (docs/MANIFEST.md).
 *
 * strip_apply trusts no range blindly: every range must lie inside the message, its bytes
 * must hash to the recorded value (a message changed after the split, or a manifest that
 * is not the message's, fails), and two different ranges must not overlap. Any failure
 * returns -1 and the router quarantines the message: when in doubt, nothing is
 * delivered. And what strip produces is a new message, split and scanned again before
 * it is delivered (docs/INTERNALS.md, "Strip"), so a mistake here can only quarantine.
 */
#include <stdlib.h>
#include <string.h>

#include <nettle/sha2.h>

#include "router.h"

const char *strip_eol(const char *msg, size_t len)
{
	const char *nl = memchr(msg, '\n', len);
	return nl && nl > msg && nl[-1] == '\r' ? "\r\n" : "\n";
}

static int strip_cut_cmp(const void *a, const void *b)
{
	const struct strip_cut *x = a, *y = b;
	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	return x->end < y->end ? -1 : x->end > y->end;
}

static void strip_sha_hex(const char *p, size_t n, char hex[65])
{
	struct sha256_ctx x;
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_init(&x);
	sha256_update(&x, n, (const uint8_t *)p);
	sha256_digest(&x, sizeof d, d);
	for (size_t i = 0; i < sizeof d; i++) {
		static const char hx[] = "0123456789abcdef";
		hex[2 * i] = hx[d[i] >> 4];
		hex[2 * i + 1] = hx[d[i] & 15];
	}
	hex[64] = '\0';
}

int strip_apply(const char *msg, size_t len, struct strip_cut *cuts, size_t n, struct buf *out,
                struct buf *why)
{
	if (n == 0) {
		buf_addstr(why, "strip: no part to strip\n");
		return -1;
	}
	for (size_t k = 0; k < n; k++) {
		const struct strip_cut *c = &cuts[k];
		char hex[65];
		if (c->start >= c->end || c->end > len) {
			buf_printf(
			    why, "strip: part %u: range %llu-%llu is not inside the message\n",
			    c->part, (unsigned long long)c->start, (unsigned long long)c->end);
			return -1;
		}
		strip_sha_hex(msg + c->start, (size_t)(c->end - c->start), hex);
		if (c->sha256 == NULL || strcmp(hex, c->sha256) != 0) {
			buf_printf(why,
			           "strip: part %u: the message bytes %llu-%llu are not the ones "
			           "the splitter saw (sha256 differs)\n",
			           c->part, (unsigned long long)c->start,
			           (unsigned long long)c->end);
			return -1;
		}
	}
	qsort(cuts, n, sizeof *cuts, strip_cut_cmp);
	const char *eol = strip_eol(msg, len);
	size_t at = 0;
	struct buf v, fn;
	buf_init(&v);
	buf_init(&fn);
	for (size_t k = 0; k < n; k++) {
		const struct strip_cut *c = &cuts[k];
		if (k > 0 && c->start == cuts[k - 1].start && c->end == cuts[k - 1].end)
			continue; /* one part named by two scanners */
		if (c->start < at) {
			buf_printf(why, "strip: parts %u and %u overlap\n", cuts[k - 1].part,
			           c->part);
			buf_free(&v);
			buf_free(&fn);
			return -1;
		}
		buf_add(out, msg + at, (size_t)c->start - at);
		buf_reset(&v);
		buf_reset(&fn);
		escape_bytes(&v, c->virus ? c->virus : "", c->virus ? strlen(c->virus) : 0, 200);
		escape_bytes(&fn, c->filename ? c->filename : "",
		             c->filename ? strlen(c->filename) : 0, 200);
		/* The notice is a complete entity in place of the one cut out: the delimiter
		 * before it and the line end before the next one stay as they were. */
		buf_printf(
		    out,
		    "Content-Type: text/plain; charset=us-ascii%sContent-Transfer-Encoding: 7bit%s"
		    "Content-Disposition: inline%s%s"
		    "This part was removed by spoold because it contained a virus.%s"
		    "Virus: %s%sOriginal file name: %s%s",
		    eol, eol, eol, eol, eol, v.len ? buf_cstr(&v) : "-", eol,
		    fn.len ? buf_cstr(&fn) : "(none)", eol);
		at = (size_t)c->end;
	}
	buf_add(out, msg + at, len - at);
	buf_free(&v);
	buf_free(&fn);
	return 0;
}
