/*
 * strip - find a MIME entity's bytes by its section path, without re-serializing.
 *
 * Why not GMime: writing a parsed tree back re-folds headers and may re-encode parts, so
 * "every other byte identical" could not hold. Here the multipart structure is walked on
 * the raw bytes (RFC 2046 section 5.1.1): the headers of each level give the boundary,
 * the delimiter lines give the children. Anything ambiguous (two Content-Type fields, no
 * boundary, a path through a non-multipart) fails, and the router quarantines instead:
 * when in doubt, the message is not delivered.
 */
#include <string.h>
#include <strings.h>

#include "router.h"

const char *strip_eol(const char *msg, size_t len)
{
	const char *nl = memchr(msg, '\n', len);
	return nl && nl > msg && nl[-1] == '\r' ? "\r\n" : "\n";
}

/* End of the line that starts at i: the index after its '\n' (or e). */
static size_t strip_line_next(const char *p, size_t i, size_t e)
{
	const char *nl = memchr(p + i, '\n', e - i);
	return nl ? (size_t)(nl - p) + 1 : e;
}

static int strip_line_blank(const char *p, size_t i, size_t e)
{
	return (i < e && p[i] == '\n') || (i + 1 < e && p[i] == '\r' && p[i + 1] == '\n');
}

/* The unfolded Content-Type value of the entity's headers [s, e) into ct. Returns the
 * body start; *n_ct counts Content-Type fields. */
static size_t strip_headers(const char *p, size_t s, size_t e, struct buf *ct, int *n_ct)
{
	size_t i = s;
	int in_ct = 0;
	*n_ct = 0;
	while (i < e) {
		if (strip_line_blank(p, i, e))
			return strip_line_next(p, i, e);
		size_t nx = strip_line_next(p, i, e);
		if (p[i] == ' ' || p[i] == '\t') {
			if (in_ct)
				for (size_t k = i; k < nx; k++)
					if (p[k] != '\r' && p[k] != '\n')
						buf_add(ct, p + k, 1);
		} else {
			in_ct = nx - i >= 13 && strncasecmp(p + i, "content-type:", 13) == 0;
			if (in_ct) {
				(*n_ct)++;
				for (size_t k = i + 13; k < nx; k++)
					if (p[k] != '\r' && p[k] != '\n')
						buf_add(ct, p + k, 1);
			}
		}
		i = nx;
	}
	return e; /* no blank line: headers only, empty body */
}

/* The boundary parameter of a multipart Content-Type value into out; 0 or -1. */
static int strip_boundary(const char *ct, struct buf *out)
{
	while (*ct == ' ' || *ct == '\t')
		ct++;
	if (strncasecmp(ct, "multipart/", 10) != 0)
		return -1;
	const char *q = ct;
	while ((q = strchr(q, ';')) != NULL) {
		q++;
		while (*q == ' ' || *q == '\t')
			q++;
		if (strncasecmp(q, "boundary", 8) != 0)
			continue;
		const char *v = q + 8;
		while (*v == ' ' || *v == '\t')
			v++;
		if (*v != '=')
			continue;
		v++;
		while (*v == ' ' || *v == '\t')
			v++;
		buf_reset(out);
		if (*v == '"') {
			for (v++; *v && *v != '"'; v++) {
				if (*v == '\\' && v[1])
					v++;
				buf_add(out, v, 1);
			}
		} else {
			while (*v && *v != ';' && *v != ' ' && *v != '\t')
				buf_add(out, v++, 1);
		}
		/* RFC 2046: 1 to 70 characters. */
		return out->len >= 1 && out->len <= 70 ? 0 : -1;
	}
	return -1;
}

/* Is the line at i a delimiter for b? 1: delimiter, 2: close delimiter, 0: no. */
static int strip_delim(const char *p, size_t i, size_t e, const struct buf *b)
{
	if (e - i < b->len + 2 || p[i] != '-' || p[i + 1] != '-' ||
	    memcmp(p + i + 2, b->data, b->len) != 0)
		return 0;
	size_t k = i + 2 + b->len;
	int close = 0;
	if (e - k >= 2 && p[k] == '-' && p[k + 1] == '-') {
		close = 1;
		k += 2;
	}
	while (k < e && (p[k] == ' ' || p[k] == '\t'))
		k++; /* transport padding */
	if (k < e && p[k] != '\r' && p[k] != '\n')
		return 0;
	return close ? 2 : 1;
}

/* Child number want (1-based) of the multipart entity [s, e). */
static int strip_child(const char *p, size_t s, size_t e, unsigned long want, size_t *cs,
                       size_t *ce)
{
	struct buf ct, b;
	int n_ct, rc = -1;
	buf_init(&ct);
	buf_init(&b);
	size_t i = strip_headers(p, s, e, &ct, &n_ct);
	if (n_ct != 1 || strip_boundary(buf_cstr(&ct), &b) < 0)
		goto out;
	unsigned long n = 0;
	size_t open_at = 0;
	for (; i < e; i = strip_line_next(p, i, e)) {
		int d = strip_delim(p, i, e, &b);
		if (d == 0)
			continue;
		if (n == want) {
			/* The line break before the delimiter belongs to the delimiter. */
			size_t end = i;
			if (end > open_at && p[end - 1] == '\n')
				end--;
			if (end > open_at && p[end - 1] == '\r')
				end--;
			*cs = open_at;
			*ce = end;
			rc = 0;
			goto out;
		}
		if (d == 2)
			break;
		n++;
		open_at = strip_line_next(p, i, e);
	}
out:
	buf_free(&ct);
	buf_free(&b);
	return rc;
}

int strip_locate(const char *msg, size_t len, const char *path, size_t *start, size_t *end)
{
	size_t s = 0, e = len;
	const char *c = path;
	if (*c == '\0')
		return -1;
	while (*c) {
		unsigned long k = 0;
		if (*c < '1' || *c > '9')
			return -1;
		while (*c >= '0' && *c <= '9' && k < 100000)
			k = k * 10 + (unsigned long)(*c++ - '0');
		if (*c == '.')
			c++;
		else if (*c)
			return -1;
		if (strip_child(msg, s, e, k, &s, &e) < 0)
			return -1;
	}
	*start = s;
	*end = e;
	return 0;
}
