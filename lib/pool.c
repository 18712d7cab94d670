/*
 * pool - shared health and load of a clamd address pool (see pool.h).
 *
 * Every change is read-modify-write of the whole file under flock(LOCK_EX): a few KB,
 * one pread and one pwrite, so runners never wait on each other for long. No fsync: the
 * file is advice (a lost update costs one probe or one unbalanced message), and a torn
 * file after a power cut fails the magic/address check and starts afresh.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "pool.h"
#include "util.h"

static const char pool_magic[8] = "SPOOLP2\n";

static int64_t pool_now_ms(void)
{
	return now_us_wall() / 1000;
}

/* A time per part recent enough to weigh (a clock step back counts as recent). */
static int pool_part_fresh(const struct pool_addr *a, int64_t now)
{
	return a->part_us > 0 && now - a->part_at_ms < POOL_LAT_STALE_MS;
}

static int pool_pid_alive(pid_t pid)
{
	return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

/* Is f a file for exactly these addresses? */
static int pool_file_matches(const struct pool_file *f, char *const *addrs, size_t n)
{
	if (memcmp(f->magic, pool_magic, sizeof pool_magic) != 0 || f->n != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(f->a[i].addr, addrs[i], sizeof f->a[i].addr) != 0)
			return 0;
	return 1;
}

static void pool_file_fresh(struct pool_file *f, char *const *addrs, size_t n)
{
	memset(f, 0, sizeof *f);
	memcpy(f->magic, pool_magic, sizeof pool_magic);
	f->n = (uint32_t)n;
	for (size_t i = 0; i < n; i++)
		bsnprintf(f->a[i].addr, sizeof f->a[i].addr, "%s", addrs[i]);
}

/* Lock and read; a missing, short or foreign file reads as fresh. 0, or -1 (logged). */
static int pool_lock_read(struct pool *p, struct pool_file *f)
{
	while (flock(p->fd, LOCK_EX) < 0)
		if (errno != EINTR) {
			log_warn(NULL, "cannot lock %s: %s", p->path, strerror(errno));
			return -1;
		}
	ssize_t r = pread(p->fd, f, sizeof *f, 0);
	if (r < 0) {
		log_warn(NULL, "cannot read %s: %s", p->path, strerror(errno));
		flock(p->fd, LOCK_UN);
		return -1;
	}
	if ((size_t)r != sizeof *f || !pool_file_matches(f, p->addrs, p->n))
		pool_file_fresh(f, p->addrs, p->n);
	/* Everything below treats the strings as C strings: never trust the file's NULs. */
	for (size_t i = 0; i < p->n; i++) {
		f->a[i].version[sizeof f->a[i].version - 1] = '\0';
		f->a[i].reason[sizeof f->a[i].reason - 1] = '\0';
	}
	return 0;
}

static void pool_write_unlock(struct pool *p, struct pool_file *f)
{
	/* Drop the in-flight entries of dead processes: a runner killed mid-scan must not
	 * leave its address looking busy. */
	for (size_t i = 0; i < p->n; i++)
		for (size_t k = 0; k < POOL_PIDS; k++)
			if (f->a[i].inflight[k].pid != 0 &&
			    (f->a[i].inflight[k].n <= 0 ||
			     !pool_pid_alive(f->a[i].inflight[k].pid)))
				f->a[i].inflight[k].pid = f->a[i].inflight[k].n = 0;
	ssize_t w = pwrite(p->fd, f, sizeof *f, 0);
	if (w != (ssize_t)sizeof *f)
		log_warn(NULL, "cannot write %s: %s", p->path,
		         w < 0 ? strerror(errno) : "short write");
	flock(p->fd, LOCK_UN);
}

int pool_open(struct pool *p, int rundir, const char *runpath, const char *scanner,
              char *const *addrs, int64_t down_min_ms, int64_t down_max_ms)
{
	char name[300];
	memset(p, 0, sizeof *p);
	p->fd = -1;
	p->addrs = addrs;
	for (p->n = 0; addrs && addrs[p->n]; p->n++)
		;
	if (p->n > POOL_MAX_ADDRS)
		p->n = POOL_MAX_ADDRS;
	p->down_min_ms = down_min_ms > 0 ? down_min_ms : 1000;
	p->down_max_ms = down_max_ms >= p->down_min_ms ? down_max_ms : p->down_min_ms;
	if (bsnprintf(name, sizeof name, "pool.%s", scanner) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	bsnprintf(p->path, sizeof p->path, "%s/%s", runpath, name);
	/* Not O_TRUNC: another runner may hold it; pool_lock_read starts a foreign one over. */
	p->fd = openat(rundir, name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
	return p->fd < 0 ? -1 : 0;
}

void pool_close(struct pool *p)
{
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
}

int pool_index(const struct pool *p, const char *addr)
{
	for (size_t i = 0; i < p->n; i++)
		if (strcmp(p->addrs[i], addr) == 0)
			return (int)i;
	return -1;
}

int pool_addr_inflight(const struct pool_addr *a)
{
	int n = 0;
	for (size_t k = 0; k < POOL_PIDS; k++)
		if (a->inflight[k].pid != 0 && a->inflight[k].n > 0 &&
		    pool_pid_alive(a->inflight[k].pid))
			n += a->inflight[k].n;
	return n;
}

/* Is addrs[i] one placement may use? Not a tcp address after a unix one (clamd.h). */
static int pool_usable(const struct pool *p, size_t i)
{
	if (strncmp(p->addrs[i], "tcp:", 4) != 0)
		return 1;
	for (size_t j = 0; j < i; j++)
		if (strncmp(p->addrs[j], "unix:", 5) == 0)
			return 0;
	return 1;
}

size_t pool_place(struct pool *p, enum pool_balance bal, size_t *order, int *due, size_t n)
{
	struct pool_file f;
	size_t k = 0;
	int load[POOL_MAX_ADDRS] = {0};
	if (p->fd < 0) {
		/* No memory: every usable address, in order, as before pools existed. */
		for (size_t i = 0; i < p->n && k < n; i++)
			if (pool_usable(p, i)) {
				due[k] = 0;
				order[k++] = i;
			}
		return k;
	}
	if (pool_lock_read(p, &f) < 0)
		return 0;
	int64_t now = pool_now_ms();
	uint64_t rr = f.rr++;
	for (size_t j = 0; j < p->n && k < n; j++) {
		/* failover keeps the configured order; the others start at the counter. */
		size_t i = bal == POOL_FAILOVER ? j : (size_t)((rr + j) % p->n);
		struct pool_addr *a = &f.a[i];
		if (!pool_usable(p, i) || a->canary_bad)
			continue;
		int is_due = 0;
		if (a->down) {
			/* A clock that stepped back must not keep an address out for longer than
			 * the longest back-off. */
			if (now < a->down_until_ms && a->down_until_ms - now <= p->down_max_ms)
				continue;
			is_due = 1;
		}
		load[i] = pool_addr_inflight(a);
		due[k] = is_due;
		order[k++] = i;
	}
	if (bal == POOL_LEAST_BUSY) {
		/* The expected wait: (in flight + 1) x weight. Only a clear outlier weighs
		 * more than 1 (POOL_SLOW_RATIO and POOL_SLOW_MIN_US), so that the noise
		 * between equal engines on a busy host never skews the even split. */
		uint32_t fastest = 0;
		for (size_t x = 0; x < k; x++) {
			const struct pool_addr *a = &f.a[order[x]];
			if (pool_part_fresh(a, now) && (fastest == 0 || a->part_us < fastest))
				fastest = a->part_us;
		}
		for (size_t x = 0; x < k; x++) {
			const struct pool_addr *a = &f.a[order[x]];
			int64_t w = 1;
			if (fastest > 0 && pool_part_fresh(a, now) &&
			    a->part_us / fastest >= POOL_SLOW_RATIO &&
			    a->part_us - fastest >= POOL_SLOW_MIN_US)
				w = a->part_us / fastest;
			int64_t v = ((int64_t)load[order[x]] + 1) * w;
			load[order[x]] = v > INT_MAX ? INT_MAX : (int)v;
		}
		/* Stable insertion sort by load: ties keep the round-robin rotation. */
		for (size_t x = 1; x < k; x++) {
			size_t oi = order[x];
			int od = due[x];
			size_t y = x;
			for (; y > 0 && load[order[y - 1]] > load[oi]; y--) {
				order[y] = order[y - 1];
				due[y] = due[y - 1];
			}
			order[y] = oi;
			due[y] = od;
		}
	}
	if (k > 0)
		f.a[order[0]].requests++;
	pool_write_unlock(p, &f);
	return k;
}

size_t pool_fallback(struct pool *p, size_t *order, size_t n, int with_bad)
{
	struct pool_file f;
	size_t k = 0;
	int have = p->fd >= 0 && pool_snapshot(p, &f) == 0;
	for (size_t i = 0; i < p->n && k < n; i++)
		if (pool_usable(p, i) && (with_bad || !(have && f.a[i].canary_bad)))
			order[k++] = i;
	return k;
}

static void pool_mark_down(struct pool *p, struct pool_addr *a, const char *why)
{
	int64_t b = a->backoff_ms > 0 ? a->backoff_ms * 2 : p->down_min_ms;
	if (b > p->down_max_ms)
		b = p->down_max_ms;
	a->backoff_ms = b;
	a->down = 1;
	a->down_until_ms = pool_now_ms() + b;
	a->errors++;
	bsnprintf(a->reason, sizeof a->reason, "%s", why ? why : "");
}

void pool_fail(struct pool *p, size_t i, const char *why)
{
	struct pool_file f;
	if (p->fd < 0 || i >= p->n || pool_lock_read(p, &f) < 0)
		return;
	int was = f.a[i].down;
	pool_mark_down(p, &f.a[i], why);
	pool_write_unlock(p, &f);
	if (!was)
		log_warn(NULL, "clamd %s is down for %lld ms: %s", p->addrs[i],
		         (long long)f.a[i].backoff_ms, why ? why : "");
}

void pool_ok(struct pool *p, size_t i)
{
	struct pool_file f;
	if (p->fd < 0 || i >= p->n)
		return;
	if (pool_lock_read(p, &f) < 0)
		return;
	if (!f.a[i].down && f.a[i].backoff_ms == 0) {
		flock(p->fd, LOCK_UN);
		return;
	}
	f.a[i].down = 0;
	f.a[i].down_until_ms = 0;
	f.a[i].backoff_ms = 0;
	if (!f.a[i].canary_bad)
		f.a[i].reason[0] = '\0';
	pool_write_unlock(p, &f);
}

void pool_probe_result(struct pool *p, size_t i, int ok, const char *version, const char *why,
                       int canary)
{
	struct pool_file f;
	if (p->fd < 0 || i >= p->n || pool_lock_read(p, &f) < 0)
		return;
	struct pool_addr *a = &f.a[i];
	if (!ok) {
		pool_mark_down(p, a, why);
	} else {
		/* A restarted clamd may run another engine or database: it must pass its
		 * own canary again before it takes mail (canary.c runs it soon). */
		if (canary && version && a->version[0] && strcmp(version, a->version) != 0) {
			a->canary_bad = 1;
			bsnprintf(a->reason, sizeof a->reason,
			          "version changed from \"%.100s\" to \"%.100s\"; canary pending",
			          a->version, version);
		} else {
			a->reason[0] = '\0';
		}
		a->down = 0;
		a->down_until_ms = 0;
		a->backoff_ms = 0;
		if (version)
			bsnprintf(a->version, sizeof a->version, "%s", version);
		log_info(NULL, "clamd %s answered its probe (%s); %s", p->addrs[i],
		         version ? version : "",
		         a->canary_bad ? "it takes mail once its canary passes"
		                       : "back in the pool");
	}
	pool_write_unlock(p, &f);
}

/* us, parts: a time sample for least-busy (us <= 0 or parts == 0: none). */
static void pool_inflight_add(struct pool *p, size_t i, int d, int64_t us, size_t parts)
{
	struct pool_file f;
	pid_t me = getpid();
	if (p->fd < 0 || i >= p->n || pool_lock_read(p, &f) < 0)
		return;
	struct pool_addr *a = &f.a[i];
	if (us > 0 && parts > 0) {
		int64_t s = us / (int64_t)parts, now = pool_now_ms();
		if (s < 1)
			s = 1;
		if (s > 60 * 1000 * 1000)
			s = 60 * 1000 * 1000;
		/* A moving average over about 4 samples: one slow scan (a big part) moves it
		 * little, a clamd that turned slow shows within a few messages. A stale one
		 * starts over. */
		if (!pool_part_fresh(a, now))
			a->part_us = (uint32_t)s;
		else
			a->part_us = (uint32_t)((3 * (int64_t)a->part_us + s) / 4);
		a->part_at_ms = now;
	}
	size_t k, freek = POOL_PIDS;
	for (k = 0; k < POOL_PIDS; k++) {
		if (a->inflight[k].pid == me)
			break;
		if (a->inflight[k].pid == 0 && freek == POOL_PIDS)
			freek = k;
	}
	if (k == POOL_PIDS)
		k = freek;
	/* More runner processes than entries: this one is not counted (balance is advice). */
	if (k < POOL_PIDS) {
		a->inflight[k].pid = me;
		a->inflight[k].n += d;
		if (a->inflight[k].n <= 0)
			a->inflight[k].pid = a->inflight[k].n = 0;
	}
	pool_write_unlock(p, &f);
}

void pool_begin(struct pool *p, size_t i)
{
	pool_inflight_add(p, i, 1, 0, 0);
}

void pool_end(struct pool *p, size_t i)
{
	pool_inflight_add(p, i, -1, 0, 0);
}

void pool_end_timed(struct pool *p, size_t i, int64_t us, size_t parts)
{
	pool_inflight_add(p, i, -1, us, parts);
}

void pool_canary(struct pool *p, size_t i, int ok, const char *version, const char *why)
{
	struct pool_file f;
	if (p->fd < 0 || i >= p->n || pool_lock_read(p, &f) < 0)
		return;
	struct pool_addr *a = &f.a[i];
	a->canary_bad = !ok;
	if (ok) {
		if (version)
			bsnprintf(a->version, sizeof a->version, "%s", version);
		a->down = 0;
		a->down_until_ms = 0;
		a->backoff_ms = 0;
		a->reason[0] = '\0';
	} else {
		a->errors++;
		bsnprintf(a->reason, sizeof a->reason, "canary: %s", why ? why : "");
	}
	pool_write_unlock(p, &f);
}

int pool_snapshot(struct pool *p, struct pool_file *out)
{
	if (p->fd < 0)
		return -1;
	if (pool_lock_read(p, out) < 0)
		return -1;
	flock(p->fd, LOCK_UN);
	return 0;
}

int pool_read(int rundir, const char *scanner, struct pool_file *out)
{
	char name[300];
	if (bsnprintf(name, sizeof name, "pool.%s", scanner) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int fd = openat(rundir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	/* A shared lock: never a half-written file. */
	while (flock(fd, LOCK_SH) < 0)
		if (errno != EINTR) {
			int e = errno;
			close(fd);
			errno = e;
			return -1;
		}
	ssize_t r = pread(fd, out, sizeof *out, 0);
	int e = errno;
	close(fd);
	if (r != (ssize_t)sizeof *out || memcmp(out->magic, pool_magic, sizeof pool_magic) != 0 ||
	    out->n > POOL_MAX_ADDRS) {
		errno = r < 0 ? e : EINVAL;
		return -1;
	}
	for (size_t i = 0; i < out->n; i++) {
		out->a[i].addr[sizeof out->a[i].addr - 1] = '\0';
		out->a[i].version[sizeof out->a[i].version - 1] = '\0';
		out->a[i].reason[sizeof out->a[i].reason - 1] = '\0';
	}
	return 0;
}

int pool_balance_parse(const char *s)
{
	if (strcmp(s, "failover") == 0)
		return POOL_FAILOVER;
	if (strcmp(s, "round-robin") == 0)
		return POOL_ROUND_ROBIN;
	if (strcmp(s, "least-busy") == 0)
		return POOL_LEAST_BUSY;
	return -1;
}

const char *pool_balance_name(enum pool_balance b)
{
	switch (b) {
	case POOL_FAILOVER:
		return "failover";
	case POOL_ROUND_ROBIN:
		return "round-robin";
	case POOL_LEAST_BUSY:
		return "least-busy";
	}
	return "?";
}

void pool_recovered_note(int rundir, const char *runpath, const char *scanner)
{
	char name[300], text[64];
	if (bsnprintf(name, sizeof name, "recovered.%s", scanner) < 0)
		return;
	bsnprintf(text, sizeof text, "recovered at=%lld\n", (long long)(now_us_wall() / 1000000));
	/* tmp + rename: the router reads a whole line or the previous one. No fsync: after a
	 * crash the held mail is retried on its own back-off anyway. */
	if (write_file_atomic(rundir, name, text, strlen(text), 0640) < 0)
		log_warn(NULL, "cannot write %s/%s: %s", runpath, name, strerror(errno));
}

int64_t pool_recovered_at(int rundir, const char *scanner)
{
	char name[300];
	struct buf b, v;
	uint64_t at = 0;
	if (bsnprintf(name, sizeof name, "recovered.%s", scanner) < 0)
		return 0;
	buf_init(&b);
	buf_init(&v);
	if (read_file_at(rundir, name, &b, 256) == 0 &&
	    strncmp(buf_cstr(&b), "recovered ", 10) == 0 && kv_find(buf_cstr(&b), "at", &v) == 0 &&
	    parse_u64(buf_cstr(&v), &at) < 0)
		at = 0;
	buf_free(&v);
	buf_free(&b);
	return at > (uint64_t)INT64_MAX ? 0 : (int64_t)at;
}
