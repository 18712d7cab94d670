/*
 * buf - a growable byte buffer, always NUL-terminated once it holds anything.
 *
 * A buffer grows as needed (doubling, from 64 bytes) and never fails: its memory comes
 * from xrealloc (alloc.h), which ends the process when there is none. buf_init'd storage
 * holds no memory until the first add; buf_free returns it to that state. data is NULL
 * until then, so a caller that wants a string calls buf_cstr. A bad buf_printf format is
 * an internal inconsistency (log_panic).
 */
#ifndef SPOOLD_BUF_H
#define SPOOLD_BUF_H

#include <stddef.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
};
void buf_init(struct buf *b);
void buf_add(struct buf *b, const void *p, size_t n);
void buf_addstr(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *buf_cstr(struct buf *b); /* NUL-terminates, returns data */
void buf_reset(struct buf *b);
void buf_free(struct buf *b);

#endif
