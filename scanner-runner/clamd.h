/*
 * clamd - a clamd protocol client for the scanner-runner's clamd mode: no clamdscan
 * process, one connection per request, every wait bounded by poll().
 *
 * Addresses are "unix:/path/to/clamd.sock" or "tcp:HOST:PORT" (HOST a name, an IPv4
 * address or a bracketed IPv6 address "[::1]"; PORT decimal). The same syntax as the
 * spoold config.
 *
 *   unix:  a descriptor is passed to clamd (zFILDES, SCM_RIGHTS) and clamd reads the
 *          file, so stream_max does not apply (max_file_size does). It is a fresh
 *          read-only open of /proc/self/fd/<fd>, not fd itself: clamd moves the offset
 *          of the descriptor it gets, and could write through a writable one.
 *   tcp:   the file is streamed with zINSTREAM from offset 0 with pread(2), in chunks
 *          of a 4-byte big-endian length, ended by a zero length. A file larger than
 *          stream_max is never sent (not even in part) and gives V_UNSCANNABLE with reply
 *          "over StreamMaxLength": a partial stream would be scanned as if it were the
 *          whole file and could be called clean.
 *
 * Either way the caller's file offset is left alone. fd must be a regular file, and one
 * larger than max_file_size is never sent either: V_UNSCANNABLE "over max_file_size"
 * (clamd would skip the rest of a file over its MaxFileSize and may call it clean).
 *
 * Trust. Whoever answers at an address decides what is clean, so:
 *   - a unix socket is used only if the process listening on it runs as one of
 *     policy.peer_uids (SO_PEERCRED, checked on every connection); anything else is
 *     V_ERROR "untrusted peer ... uid N ...", and nothing is sent to it;
 *   - a tcp address is trusted as listed: anyone who can bind it passes mail. So a
 *     tcp address is never a failover for a unix one: in an address list, a tcp address
 *     that comes after a unix address is never used (failover stays within the trust
 *     class, and tcp is the weaker one). A unix socket that fails, refuses (ECONNREFUSED)
 *     or is full (EAGAIN) gives an error verdict, and the message is held.
 *
 * Reply mapping (strict: anything not recognised fails closed):
 *   "stream: OK", "fd[N]: OK"                          V_CLEAN
 *   "stream: NAME FOUND", "fd[N]: NAME FOUND"          V_INFECTED, virus = NAME
 *   NAME starting with "Heuristics.Limits.Exceeded"    V_UNSCANNABLE (a limit stopped the
 *                                                      scan: never clean, not a virus)
 *   "... ERROR" saying a limit was exceeded/reached    V_UNSCANNABLE
 *   "... ERROR" otherwise                              V_ERROR
 *   anything else, an empty reply, a reply without its NUL, more than one reply, a
 *   connection closed before the reply, a reply before the stream was complete, or no
 *   reply within timeout_ms                            V_ERROR
 *
 * Beware: clamd itself answers "OK" for a file over its MaxFileSize/MaxScanSize unless
 * clamd.conf says "AlertExceedsMax yes" (then: Heuristics.Limits.Exceeded.* FOUND).
 *
 * DIAGNOSTICS
 *   clamd_scan_fd and clamd_scan_fd_any return 0 when clamd gave a verdict (V_CLEAN or
 *   V_INFECTED) and -1 otherwise, with r->verdict V_ERROR or V_UNSCANNABLE and r->reply
 *   saying why: clamd's own reply line, or our text such as "timeout",
 *   "over StreamMaxLength", "over max_file_size" (both V_UNSCANNABLE), "untrusted peer
 *   on PATH: uid N (pid P) ...", "connect: Connection refused", "connection closed
 *   without reply", "reply too long", "not a regular file", "bad address (...)". A reply
 *   that does not fit a line (CLAMD_REPLY_MAX) is an error, never cut short and parsed.
 *   r->reply may hold any byte but
 *   NUL: escape it before writing it anywhere.
 *   Nothing is logged here; the caller logs with the queue ID.
 *
 * Signals: SIGPIPE is never raised (MSG_NOSIGNAL); EINTR is retried with the remaining
 * time. Name resolution (getaddrinfo) for a non-numeric HOST is not bounded by
 * timeout_ms; numeric addresses never block there.
 */
#ifndef SPOOLD_CLAMD_H
#define SPOOLD_CLAMD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "conf.h"
#include "verdict.h"

#define CLAMD_PEER_MAX 4

/* What a scan may send where; the same for every address of a scanner. */
struct clamd_policy {
	uint64_t stream_max;    /* tcp: most bytes ever streamed (clamd's StreamMaxLength) */
	uint64_t max_file_size; /* any address: a larger file is V_UNSCANNABLE, never sent */
	uid_t peer_uids[CLAMD_PEER_MAX]; /* unix: the uids clamd may run as; none: no unix */
	size_t n_peer_uids;
};

/* The policy of a clamd scanner from its config: stream_max_length, max_file_size and
 * peer_user (unset: root, clamav if that user exists, and our own effective uid). */
void clamd_policy_init(struct clamd_policy *p, const struct conf_scanner *sc);

struct clamd_result {
	enum verdict verdict;
	char virus[256]; /* signature name when infected, else "" */
	char reply[512]; /* clamd's raw reply line (bounded, newline stripped) or our error text */
	char addr[256];  /* which address answered (the last one tried) */
	int contacted;   /* 1 once the address itself was asked: its failure is its own */
};

/* Told of every address that failed a request after it was contacted (connect error,
 * timeout, protocol error, an ERROR reply): the pool marks it down. */
typedef void clamd_fail_fn(void *ctx, const char *addr, const struct clamd_result *r);

/*
 * Scan the file open on fd at addr under pol (pol->stream_max 0 allows only an empty file
 * over tcp). timeout_ms (> 0) bounds the whole exchange: connect, send, reply; past it ->
 * V_ERROR "timeout". Returns 0 on a verdict (clean or infected), -1 otherwise (see
 * DIAGNOSTICS).
 */
int clamd_scan_fd(const char *addr, int fd, const struct clamd_policy *pol, int timeout_ms,
                  struct clamd_result *r);

/*
 * Try each address of the NULL-terminated addrs in order until one gives a verdict
 * (failover); each try gets its own timeout_ms. A tcp address after a unix one is never
 * tried (see Trust). Returns 0 on a verdict, -1 if all failed, r then describing the
 * last failure (an empty list: V_ERROR "no clamd address"); when more than one address
 * was tried, r->reply names each with its failure ("A: timeout; B: connect: ...").
 */
int clamd_scan_fd_any(char *const *addrs, int fd, const struct clamd_policy *pol, int timeout_ms,
                      struct clamd_result *r);

/*
 * A session: every request for one message over one connection (zIDSESSION ... zEND),
 * opened on the first request. clamd_session_scan_fd gives the same results as
 * clamd_scan_fd_any: anything but a verdict ends the session, and that part and the
 * rest of the message go through the per-request path (a clamd that timed out is not
 * asked again within the session's life; the next address is). On a unix socket fd
 * itself is passed to clamd, which moves its offset: open the file read-only for this
 * one scan.
 */
/* A parsed address: either a unix socket path, or a host and a numeric port. */
struct clamd_addr {
	int is_unix;
	char path[108]; /* sizeof sun_path on Linux */
	char host[256];
	char port[6];
};

struct clamd_session {
	char *const *addrs;
	const struct clamd_policy *pol;
	size_t at;  /* the address in use: the session's, or where the per-request path starts */
	int s;      /* the session's socket, -1 when none */
	int failed; /* no (more) session for this message */
	unsigned next_id;
	struct clamd_addr a;
	struct clamd_result last; /* what ended the session on a timeout */
	clamd_fail_fn *on_fail;   /* may be NULL; see clamd_fail_fn */
	void *fail_ctx;
};

/* pol must outlive the session. */
void clamd_session_init(struct clamd_session *cs, char *const *addrs,
                        const struct clamd_policy *pol);
int clamd_session_scan_fd(struct clamd_session *cs, int fd, int timeout_ms, struct clamd_result *r);
/* Requests sent ahead in one session: clamd scans them in parallel. */
#define CLAMD_SESSION_BATCH 8
/*
 * Scan n files in the session, rs[i] for fds[i]; the same results as n calls of
 * clamd_session_scan_fd. On a unix socket up to CLAMD_SESSION_BATCH zFILDES requests go
 * out before the first reply is read, so clamd's threads scan them side by side; each
 * batch has timeout_ms in all. Over tcp the parts go one at a time.
 */
void clamd_session_scan_fds(struct clamd_session *cs, const int *fds, size_t n, int timeout_ms,
                            struct clamd_result *rs);
/* zEND and close; harmless on a session never opened or already closed. */
void clamd_session_close(struct clamd_session *cs);

/*
 * zVERSION: clamd's version line, e.g. "ClamAV 1.4.6/27471/Mon Nov 24 09:40:12 2026"
 * (just "ClamAV 1.4.6" when clamd has no official database). 0 on success; -1 if clamd
 * did not answer with a "ClamAV " line or the line did not fit in out; on -1 out holds
 * the reason (or the truncated line), when len > 0.
 */
int clamd_version(const char *addr, const struct clamd_policy *pol, int timeout_ms, char *out,
                  size_t len);
/* clamd_version on each address of addrs in turn, under the failover rule of
 * clamd_scan_fd_any, until one answers. */
int clamd_version_any(char *const *addrs, const struct clamd_policy *pol, int timeout_ms, char *out,
                      size_t len);

/* zPING: 0 if clamd answered PONG within timeout_ms, else -1. */
int clamd_ping(const char *addr, const struct clamd_policy *pol, int timeout_ms);

/*
 * Map one reply line (without its NUL) to r->verdict, r->virus and r->reply per the
 * table above. Returns 0 for V_CLEAN or V_INFECTED, -1 otherwise. Exposed for tests.
 */
int clamd_reply_parse(const char *line, struct clamd_result *r);

#endif
