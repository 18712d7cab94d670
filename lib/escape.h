/*
 * escape - bytes from outside (a message, a peer, a file name) made safe to put into one
 * line of text, and read back.
 *
 * An escaped value never breaks a line, forges a field or a key, or carries a control
 * byte. Four forms: escape_bytes for the fields of the spool's text files and for values
 * in log lines, which unescape_bytes reverses; text_escape for text that people read;
 * json_escape for JSON strings; and the " key=value" tokens of spool lines (kv_add,
 * kv_find), whose values are escape_bytes'd.
 *
 * Escaping never fails (buffers grow, alloc.h). Reading back returns -1 on a malformed
 * escape or a missing key; the caller decides what a bad line means.
 */
#ifndef SPOOLD_ESCAPE_H
#define SPOOLD_ESCAPE_H

#include <stddef.h>

#include "buf.h"

/* Escape arbitrary bytes for one line of a spool text file or a log line:
 * printable ASCII except '\\' and ' ' pass, all else becomes \xHH. Bounded by maxin
 * input bytes; longer input is cut and marked with "...". */
void escape_bytes(struct buf *out, const void *p, size_t n, size_t maxin);
/* The same for text that people read (reports, status, notices): spaces and '=' stay, a
 * backslash and every byte outside printable ASCII become \xHH, so it never holds a line
 * break or a control byte from outside. */
void text_escape(struct buf *out, const void *p, size_t n, size_t maxin);
/* Append p[0..n) as the inside of a JSON string: quotes, backslashes, control bytes and
 * bytes over 0x7e become escapes (bytes >= 0x80 as \u00XX), so the result is always valid
 * JSON whatever the input. */
void json_escape(struct buf *out, const void *p, size_t n);
/* For a terminal (spoolctl's listings): printable ASCII stays, a newline and a tab
 * too with keep_nl, every other byte becomes \xHH. */
void terminal_escape(struct buf *out, const char *s, size_t n, int keep_nl);
/* Reverse of escape_bytes; returns -1 on a malformed escape. */
int unescape_bytes(struct buf *out, const char *s);

/* Find the token "key=value" among the space-separated tokens of line (up to the end
 * of the line) and unescape its value into out (reset first). 0 if found, -1 if absent or
 * malformed. */
int kv_find(const char *line, const char *key, struct buf *out);
/* Append " key=" and the escaped value. */
void kv_add(struct buf *out, const char *key, const void *val, size_t n);
void kv_addstr(struct buf *out, const char *key, const char *val);

#endif
