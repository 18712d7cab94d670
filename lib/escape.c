/*
 * escape - see escape.h.
 */
#include "escape.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"

/* One code for both escapings: a byte passes when it is printable ASCII (a space too,
 * when spaces may stay) and not one of the bytes the format reserves. */
static void escape_with(struct buf *out, const void *p, size_t n, size_t maxin, int space_ok,
                        int eq_ok)
{
	const unsigned char *s = p;
	size_t lim = n < maxin ? n : maxin;
	for (size_t i = 0; i < lim; i++) {
		unsigned char c = s[i];
		if ((c > 0x20 || (space_ok && c == 0x20)) && c < 0x7f && c != '\\' &&
		    (eq_ok || c != '='))
			buf_add(out, &c, 1);
		else
			buf_printf(out, "\\x%02x", c);
	}
	if (lim < n)
		buf_addstr(out, "...");
}

void text_escape(struct buf *out, const void *p, size_t n, size_t maxin)
{
	escape_with(out, p, n, maxin, 1, 1);
}

void escape_bytes(struct buf *out, const void *p, size_t n, size_t maxin)
{
	escape_with(out, p, n, maxin, 0, 0);
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int unescape_bytes(struct buf *out, const char *s)
{
	while (*s) {
		if (*s != '\\') {
			buf_add(out, s, 1);
			s++;
			continue;
		}
		if (s[1] != 'x')
			return -1;
		int hi = hexval((unsigned char)s[2]);
		int lo = hi < 0 ? -1 : hexval((unsigned char)s[3]);
		if (lo < 0)
			return -1;
		char c = (char)(hi * 16 + lo);
		buf_add(out, &c, 1);
		s += 4;
	}
	buf_cstr(out);
	return 0;
}

int kv_find(const char *line, const char *key, struct buf *out)
{
	size_t klen = strlen(key);
	const char *p = line;
	buf_reset(out);
	while (*p && *p != '\n') {
		while (*p == ' ')
			p++;
		const char *tok = p;
		while (*p && *p != ' ' && *p != '\n')
			p++;
		if ((size_t)(p - tok) > klen && strncmp(tok, key, klen) == 0 && tok[klen] == '=') {
			char *v = xstrndup(tok + klen + 1, (size_t)(p - tok) - klen - 1);
			int r = unescape_bytes(out, v);
			free(v);
			return r;
		}
	}
	return -1;
}

void kv_add(struct buf *out, const char *key, const void *val, size_t n)
{
	buf_printf(out, " %s=", key);
	escape_bytes(out, val, n, 4096);
}

void kv_addstr(struct buf *out, const char *key, const char *val)
{
	kv_add(out, key, val, strlen(val));
}

void json_escape(struct buf *out, const void *p, size_t n)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];
		if (c == '"' || c == '\\')
			buf_printf(out, "\\%c", c);
		else if (c < 0x20 || c > 0x7e)
			buf_printf(out, "\\u%04x", c);
		else
			buf_add(out, &c, 1);
	}
}

/* Append s[0..n) to out for a terminal: every byte that is not printable ASCII becomes
 * \xNN (a newline and a tab are kept only with keep_nl). The fields spoolctl shows come
 * from senders and scanners (subjects, file names, virus names): an ESC or a CR in one
 * must not colour or rewrite the administrator's terminal, a newline must not forge a
 * line, and a byte >= 0x80 (0x9b is a one-byte CSI on some terminals) is never raw. A
 * backslash stays as it is: the output is for eyes, never parsed back. */
void terminal_escape(struct buf *out, const char *s, size_t n, int keep_nl)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 0x20 && c < 0x7f) || (keep_nl && (c == '\n' || c == '\t')))
			buf_add(out, &c, 1);
		else
			buf_printf(out, "\\x%02x", c);
	}
}
