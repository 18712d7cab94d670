/*
 * clamd_int - the pieces of the clamd client that clamd.c (one request per connection)
 * and clamd_session.c (one connection per message) share. Private to scanner-runner;
 * clamd.h is the contract. Every function that takes a struct clamd_result sets it on
 * failure (r->verdict V_ERROR or V_UNSCANNABLE, r->reply saying why) and logs nothing.
 */
#ifndef SPOOLD_CLAMD_INT_H
#define SPOOLD_CLAMD_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "clamd.h"

/* Longest reply read. A clamd reply is a prefix, a signature name and one word; more is
 * not clamd talking. Larger than clamd_result.reply, so storing a bounded copy never
 * hides part of what was parsed. */
#define CLAMD_REPLY_MAX 1024

/* Set the verdict and our own reply text; returns -1 so callers can "return clamd_fail()". */
int clamd_fail(struct clamd_result *r, enum verdict v, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* r as an error with no reply yet (fail closed), answered by addr. */
void clamd_result_reset(struct clamd_result *r, const char *addr);
/* Copy a reply of len bytes into line (CLAMD_REPLY_MAX bytes); too long is an error. */
int clamd_line_copy(char *line, const char *src, size_t len, struct clamd_result *r);
/* May failover use addrs[i]? Not a tcp address after a unix one (clamd.h, Trust). */
int clamd_addr_usable(char *const *addrs, size_t i);
/* "unix:/path" or "tcp:HOST:PORT" / "tcp:[V6]:PORT". 0, or -1. */
int clamd_addr_parse(const char *addr, struct clamd_addr *a, struct clamd_result *r);
/* Wait for events on s until deadline: the revents (> 0), or -1 ("timeout", poll error). */
int clamd_wait(int s, short events, int64_t deadline, struct clamd_result *r);
/* A connected, non-blocking, close-on-exec socket to a (a unix peer must be one of
 * pol's uids), or -1. */
int clamd_open(const struct clamd_addr *a, const struct clamd_policy *pol, int64_t deadline,
               struct clamd_result *r);
/* Send n bytes: 0 when all went, -1 on an error, 1 when the peer spoke or went away
 * first (read what it said). clamd_fildes_send and clamd_instream_send return the same. */
int clamd_send_all(int s, const void *p, size_t n, int64_t deadline, struct clamd_result *r);
/* zFILDES with fd riding on one byte after the command. */
int clamd_fildes_send(int s, int fd, int64_t deadline, struct clamd_result *r);
/* zINSTREAM of the file on fd from offset 0, at most stream_max bytes. */
int clamd_instream_send(int s, int fd, uint64_t stream_max, int64_t deadline,
                        struct clamd_result *r);
/* Is a file of size bytes too large for pol over a? -1 with r V_UNSCANNABLE if so. */
int clamd_too_large(const struct clamd_addr *a, const struct clamd_policy *pol, uint64_t size,
                    struct clamd_result *r);
/* The most bytes a stream may carry, even if the file grows after the size check. */
uint64_t clamd_stream_limit(const struct clamd_policy *pol);
/* Per-request failover from addrs[from] on; each contacted address that fails goes to
 * on_fail (may be NULL). 0 on a verdict, -1 otherwise. */
int clamd_scan_fd_from_cb(char *const *addrs, size_t from, int fd, const struct clamd_policy *pol,
                          int timeout_ms, struct clamd_result *r, clamd_fail_fn *on_fail,
                          void *ctx);

#endif
