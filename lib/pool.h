/*
 * pool - the shared state of a clamd scanner's address pool: which address is up, how
 * busy each one is, what engine version each runs. One file per scanner,
 * run/pool.<scanner>, shared by every runner process of the spool (and read by spoolctl
 * status).
 *
 * Placement (balance):
 *   failover     the configured order (today's behaviour);
 *   round-robin  a counter in the file turns the order by one per message;
 *   least-busy   the shortest expected wait first: requests in flight (counted across
 *                every runner process) plus one, times the address's weight; ties broken
 *                by the round-robin counter. The weight is 1, or, for an address whose
 *                recent time per part is POOL_SLOW_RATIO times the fastest one's or more
 *                and POOL_SLOW_MIN_US more, that ratio: a slow clamd (overloaded, far
 *                away, behind a slow link)
 *                gets mail only when the others have that many requests queued. A time
 *                older than POOL_LAT_STALE_MS no longer counts (weight 1 again), so a
 *                slow address that recovered is found by the next message it gets.
 * Only usable addresses are placed: an address that is down (and not yet due for a
 * probe) or that failed its own canary takes no mail. A tcp address listed after a
 * unix one is never placed (clamd.h: failover stays within its trust class).
 *
 * Health memory. pool_fail marks an address down for a back-off that doubles from
 * down_min to down_max ms; every runner sees the mark. Once the back-off is over the
 * address is "due": the next runner that wants it probes it (PING, then VERSION) before
 * it takes mail (pool_probe_result). pool_ok clears the back-off after a verdict.
 * pool_canary records the address's own canary result: a failed canary keeps it out until
 * a later canary passes (one bad engine in a pool never passes mail).
 *
 * In flight: a request counts from pool_begin to pool_end, per process id; an entry of a
 * process that died (kill -9) is dropped the next time the file is written, so a crash
 * never leaves an address looking busy for ever.
 *
 * File: a fixed binary layout (struct pool_file), read and written whole under flock(2)
 * LOCK_EX on the file itself; the critical sections are a pread and a pwrite, never a
 * network wait. A file that is short, of another layout or for other addresses is
 * started afresh: it is a memory, not a record; losing it costs at most one probe.
 *
 * DIAGNOSTICS
 *   pool_open returns -1 with errno when the file cannot be opened or created; the
 *   caller then scans without pool memory (failover order, as before). Every later
 *   call on such a pool does nothing. I/O errors after open are logged (warn) and the
 *   call does nothing more: health memory is advice, never a verdict.
 */
#ifndef SPOOLD_POOL_H
#define SPOOLD_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define POOL_MAX_ADDRS 16
#define POOL_PIDS      32
/* least-busy: slower than this many times the fastest address weighs by the ratio. */
#define POOL_SLOW_RATIO 3
/* ... and this much slower per part (us): a few ms of scheduling noise on a busy host
 * are several times a fast FILDES scan, and must not skew an even split. */
#define POOL_SLOW_MIN_US 20000
/* least-busy: a time per part older than this is forgotten. */
#define POOL_LAT_STALE_MS 5000

enum pool_balance { POOL_FAILOVER, POOL_ROUND_ROBIN, POOL_LEAST_BUSY };

struct pool_addr {
	char addr[256];
	int64_t down_until_ms; /* wall clock ms; 0 when up */
	int64_t backoff_ms;    /* the last back-off; 0 when up */
	uint64_t errors;       /* failures since the file was made */
	uint64_t requests;     /* messages placed here since the file was made */
	uint32_t canary_bad;   /* failed its own canary: takes no mail until one passes */
	uint32_t down;         /* 1 while marked down (probe due once down_until passed) */
	uint32_t part_us;      /* recent time per part (per 256 KB of a big one), moving
	                        * average (us); 0 if unknown */
	int64_t part_at_ms;    /* wall clock ms of its last sample */
	char version[128];     /* its last VERSION reply, "" if unknown */
	char reason[256];      /* why it is down or bad, "" when up */
	struct {
		int32_t pid;
		int32_t n;
	} inflight[POOL_PIDS];
};

struct pool_file {
	char magic[8]; /* "SPOOLP2\n" (P1 had no time per part) */
	uint32_t n;
	uint32_t pad;
	uint64_t rr; /* round-robin counter */
	struct pool_addr a[POOL_MAX_ADDRS];
};

struct pool {
	int fd; /* -1: no shared memory, every call a no-op */
	char path[4096];
	size_t n;
	char *const *addrs;
	int64_t down_min_ms, down_max_ms;
};

/* Open (create) run/pool.<scanner> for addrs. 0, or -1 with errno (p->fd is then -1). */
int pool_open(struct pool *p, int rundir, const char *runpath, const char *scanner,
              char *const *addrs, int64_t down_min_ms, int64_t down_max_ms);
void pool_close(struct pool *p);

/* Candidate order for one message: up to n indexes into addrs, the preferred first.
 * Addresses due for a probe come with due[k] = 1: probe them, then report with
 * pool_probe_result before use. Returns how many (0: every address down or bad). Bumps
 * the round-robin counter. */
size_t pool_place(struct pool *p, enum pool_balance bal, size_t *order, int *due, size_t n);
/* canary: a version change after the probe keeps the address out until its canary. */
/* When pool_place found nothing: every usable address that has not failed its canary
 * (with_bad: those too), in the configured order, down or not (today's rule: try them,
 * and hold the message if they all fail). Returns how many. */
size_t pool_fallback(struct pool *p, size_t *order, size_t n, int with_bad);
void pool_probe_result(struct pool *p, size_t i, int ok, const char *version, const char *why,
                       int canary);
/* A request in flight at addrs[i] for this process (+1 at begin, -1 at end). */
void pool_begin(struct pool *p, size_t i);
void pool_end(struct pool *p, size_t i);
/* pool_end, and the request's clamd time over the parts it scanned (us > 0, parts > 0;
 * the caller counts a big part as several, farm.c one per 256 KB) for least-busy's
 * weight: one locked write. */
void pool_end_timed(struct pool *p, size_t i, int64_t us, size_t parts);
/* An address gave a verdict (ok) or failed (connect, timeout, protocol): the back-off. */
void pool_ok(struct pool *p, size_t i);
void pool_fail(struct pool *p, size_t i, const char *why);
/* Its own canary: passed (with its version) or failed (why). */
void pool_canary(struct pool *p, size_t i, int ok, const char *version, const char *why);
/* The index of addr in the pool, or -1. */
int pool_index(const struct pool *p, const char *addr);
/* A copy of the whole state (in flight counts only of live processes). 0 or -1. */
int pool_snapshot(struct pool *p, struct pool_file *out);
/* Requests in flight at one address of a snapshot. */
int pool_addr_inflight(const struct pool_addr *a);
/* Read run/pool.<scanner> without creating it, for display. 0, or -1 with errno. */
int pool_read(int rundir, const char *scanner, struct pool_file *out);
/* "failover" / "round-robin" / "least-busy" -> enum; -1 if unknown. */
int pool_balance_parse(const char *s);
const char *pool_balance_name(enum pool_balance b);

/*
 * Scanner recovery (issue 20): when a scanner passes its canary again after it was
 * degraded, the runner writes run/recovered.<scanner> ("recovered at=<unix-seconds>"),
 * and the router retries at once the held mail that this scanner's errors held (the
 * mail is scanned again as usual). Any scanner, not only clamd.
 */
void pool_recovered_note(int rundir, const char *runpath, const char *scanner);
/* The time of the scanner's last recovery, 0 if none is recorded. */
int64_t pool_recovered_at(int rundir, const char *scanner);

#endif
