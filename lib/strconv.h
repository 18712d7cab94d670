/*
 * strconv - numbers to strings and back, refusing what does not fit rather than cutting
 * it short or wrapping around (OpenSMTPD's bsnprintf).
 *
 * Neither allocates. Both return 0, or -1 when the result would not be exact: the caller
 * says what that means where it happens (a name too long, a field malformed).
 */
#ifndef SPOOLD_STRCONV_H
#define SPOOLD_STRCONV_H

#include <stddef.h>
#include <stdint.h>

/* snprintf that reports truncation: returns 0 on success, -1 if it did not fit. */
int bsnprintf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Parse a decimal non-negative integer that fills the string. 0 or -1. */
int parse_u64(const char *s, uint64_t *out);

#endif
