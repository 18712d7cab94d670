/*
 * alloc - allocation that either succeeds or ends the process.
 *
 * Running out of memory is an environment failure that a restart may cure: every function
 * here that cannot get its memory dies temporary (die_temp, EX_TEMPFAIL), so no caller
 * checks for NULL. A request of 0 bytes gets a valid pointer of its own. A bad printf
 * format is an internal inconsistency (log_panic).
 */
#ifndef SPOOLD_ALLOC_H
#define SPOOLD_ALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t sz);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* printf into a fresh allocation */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
