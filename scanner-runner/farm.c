/*
 * farm - pooled clamd scanning with a verdict cache (see farm.h).
 *
 * One message: place it (pool_place), probe the addresses that are due (PING, then
 * VERSION: an address that answers both is up again), answer what the cache knows, send
 * the rest through one clamd session over the placed addresses (clamd.c fails over
 * within the list), and feed every address failure back to the pool, so that the next
 * message, in any runner, avoids it. The slot (max_concurrent) still bounds how many of
 * our requests the scanner serves at once.
 *
 * Trust: placement only reorders addresses clamd.c would use anyway; a tcp address after
 * a unix one is never placed, and every connection still goes through clamd.c's peer
 * checks. The cache answers only for the same bytes, scanner and clamd VERSION line
 * (engine and database) that the address placed first reports right now, and stores
 * only what that address said.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "clamd.h"
#include "farm.h"
#include "log.h"
#include "metrics.h"
#include "slot.h"
#include "trace.h"
#include "util.h"

/* The time a probe may take, per request (PING, VERSION): a live clamd answers at once. */
#define FARM_PROBE_MS 2000

struct farm_state {
	const struct conf_scanner *sc;
	struct pool pool;
	struct cache cache;
	int cache_tried;
	unsigned char bad[POOL_MAX_ADDRS]; /* failed this process's own canary */
};

static struct cache *farm_cache(struct stage *st, struct farm_state *f);

/* A part's weight in least-busy's time sample: one per part, plus one per 256 KB, so
 * that a healthy clamd that just scanned a big attachment does not look slow. */
static size_t farm_units(uint64_t size)
{
	uint64_t u = 1 + size / (256 * 1024);
	return u > 100000 ? 100000 : (size_t)u;
}

/* Monotonic microseconds: a part on a fast clamd takes well under a millisecond. */
static int64_t farm_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static struct farm_state *farm_g;
static size_t farm_n;

static struct farm_state *farm_state(struct stage *st, const struct conf_scanner *sc)
{
	for (size_t i = 0; i < farm_n; i++)
		if (farm_g[i].sc == sc)
			return &farm_g[i];
	/* One slot per configured scanner, allocated once: callers keep pointers. */
	if (farm_g == NULL)
		farm_g = xcalloc(st->conf->n_scanners ? st->conf->n_scanners : 1, sizeof *farm_g);
	if (farm_n >= st->conf->n_scanners)
		log_panic("farm_state: scanner %s is not in the configuration", sc->name);
	struct farm_state *f = &farm_g[farm_n++];
	memset(f, 0, sizeof *f);
	f->sc = sc;
	char runpath[4200];
	bsnprintf(runpath, sizeof runpath, "%s/run", st->spool.root);
	if (pool_open(&f->pool, st->spool.fd[SD_RUN], runpath, sc->name, sc->clamd_addrs,
	              (int64_t)sc->down_min * 1000, (int64_t)sc->down_max * 1000) < 0)
		log_warn(NULL, "cannot open %s/pool.%s: %s; scanner %s runs without pool memory",
		         runpath, sc->name, strerror(errno), sc->name);
	return f;
}

struct pool *farm_pool(struct stage *st, const struct conf_scanner *sc)
{
	return &farm_state(st, sc)->pool;
}

int farm_canary_wanted(struct stage *st, const struct conf_scanner *sc)
{
	struct pool_file pf;
	struct pool *p = farm_pool(st, sc);
	if (pool_snapshot(p, &pf) < 0)
		return 0;
	for (size_t i = 0; i < p->n; i++)
		if (pf.a[i].canary_bad)
			return 1;
	return 0;
}

void farm_canary_mark(struct stage *st, const struct conf_scanner *sc, size_t i, int ok,
                      const char *version, const char *why)
{
	struct farm_state *f = farm_state(st, sc);
	if (i < POOL_MAX_ADDRS)
		f->bad[i] = !ok;
	pool_canary(&f->pool, i, ok, version, why);
	/* An engine that answers its canary wrongly may have answered mail wrongly before,
	 * under the same VERSION line: nothing cached until now is served again. */
	struct cache *c = ok ? NULL : farm_cache(st, f);
	if (c)
		cache_generation_bump(c);
}

int farm_versions_changed(struct stage *st, const struct conf_scanner *sc)
{
	struct pool_file pf;
	struct clamd_policy pol;
	struct pool *p = farm_pool(st, sc);
	if (pool_snapshot(p, &pf) < 0)
		return 0;
	clamd_policy_init(&pol, sc);
	for (size_t i = 0; i < p->n; i++) {
		char v[sizeof pf.a[i].version];
		/* Down or never checked: the probe or the next canary looks at it anyway. */
		if (pf.a[i].down || pf.a[i].canary_bad || pf.a[i].version[0] == '\0')
			continue;
		if (clamd_version(p->addrs[i], &pol, FARM_PROBE_MS, v, sizeof v) == 0 &&
		    strcmp(v, pf.a[i].version) != 0) {
			log_info(NULL, "scanner %s: clamd %s version changed from \"%s\" to \"%s\"",
			         sc->name, p->addrs[i], pf.a[i].version, v);
			return 1;
		}
	}
	return 0;
}

static struct cache *farm_cache(struct stage *st, struct farm_state *f)
{
	if (!f->sc->cache)
		return NULL;
	if (!f->cache_tried) {
		char runpath[4200];
		f->cache_tried = 1;
		bsnprintf(runpath, sizeof runpath, "%s/run", st->spool.root);
		cache_open(&f->cache, runpath, f->sc->name, f->sc->cache_size);
	}
	return f->cache.env ? &f->cache : NULL;
}

/* clamd.c tells us of each address that failed: it is down for its back-off. */
static void farm_on_fail(void *ctx, const char *addr, const struct clamd_result *r)
{
	struct pool *p = ctx;
	int i = pool_index(p, addr);
	if (i >= 0)
		pool_fail(p, (size_t)i, r->reply);
}

/* PING, then VERSION: a cheap proof of life before an address takes mail again. */
static int farm_probe(struct pool *p, size_t i, const struct clamd_policy *pol, int canary)
{
	char version[128];
	if (clamd_ping(p->addrs[i], pol, FARM_PROBE_MS) < 0) {
		pool_probe_result(p, i, 0, NULL, "probe: no PONG", 0);
		return -1;
	}
	if (clamd_version(p->addrs[i], pol, FARM_PROBE_MS, version, sizeof version) < 0) {
		char why[200];
		bsnprintf(why, sizeof why, "probe: VERSION failed: %.150s", version);
		pool_probe_result(p, i, 0, NULL, why, 0);
		return -1;
	}
	pool_probe_result(p, i, 1, version, NULL, canary);
	return 0;
}

/* Scan time per clamd request batch, for the histogram (as runner.c's). */
static void farm_observe(const struct conf_scanner *sc, long ms)
{
	char esc[256], labels[300];
	metrics_label_escape(sc->name, esc, sizeof esc);
	bsnprintf(labels, sizeof labels, "scanner=\"%s\"", esc);
	metrics_observe("spoold_scan_seconds", labels, (double)ms / 1000.0);
}

static void farm_count(const char *metric, const char *scanner, const char *result, size_t n)
{
	char esc[256], labels[400];
	if (n == 0)
		return;
	metrics_label_escape(scanner, esc, sizeof esc);
	bsnprintf(labels, sizeof labels, "scanner=\"%s\",result=\"%s\"", esc, result);
	metrics_inc(metric, labels, n);
}

/* The message cannot be placed: one error per part naming every address and why. */
static void farm_all_down(struct runner_scanner *rs, struct pool *p, const struct manifest *m,
                          struct verdicts *vs, const char *qid, int backup)
{
	struct pool_file pf;
	struct buf why;
	buf_init(&why);
	buf_addstr(&why, "every clamd address is down or failed its canary:");
	if (pool_snapshot(p, &pf) == 0) {
		for (size_t i = 0; i < p->n; i++)
			buf_printf(&why, "%s %s (%s)", i ? ";" : "", p->addrs[i],
			           pf.a[i].reason[0] ? pf.a[i].reason : "not usable");
	}
	char reply[512];
	bsnprintf(reply, sizeof reply, "%.500s", buf_cstr(&why));
	for (size_t i = 0; i < m->n_parts; i++) {
		struct verdict_line *l =
		    verdicts_add(vs, (int)m->parts[i].index, rs->conf->name, V_ERROR, "", "pool", 0,
		                 rs->version, "clamd", reply);
		l->backup = backup;
	}
	log_warn(qid, "scanner=%s %s; the message will be held", rs->conf->name, reply);
	buf_free(&why);
}

/* The VERSION line of addr for the verdict record ("" if the pool does not know it). */
static void farm_addr_version(struct pool_file *pf, int have, const struct pool *p,
                              const char *addr, const char *dflt, char *out, size_t len)
{
	int i = pool_index(p, addr);
	if (have && i >= 0 && pf->a[i].version[0])
		bsnprintf(out, len, "%s", pf->a[i].version);
	else
		bsnprintf(out, len, "%s", dflt);
}

void farm_scan_clamd(struct stage *st, struct runner_scanner *rs, int dirfd,
                     const struct manifest *m, struct verdicts *vs, const char *qid, int backup)
{
	const struct conf_scanner *sc = rs->conf;
	struct farm_state *f;
	struct clamd_session cs;
	struct clamd_policy pol;
	size_t order[POOL_MAX_ADDRS];
	int due[POOL_MAX_ADDRS];
	char *addrs[POOL_MAX_ADDRS + 1];
	size_t n = 0, hits = 0, misses = 0, sent = 0;
	int64_t scan_us = 0;
	int all_first = 1;
	if (m->n_parts == 0)
		return;
	f = farm_state(st, sc);
	/* Bounded, like every scanner's slot (scanner_runner.slot_wait): a slot nobody frees
	 * is an error verdict, and the message is held, never a stall. */
	int wait_s = st->conf->runner.slot_wait;
	int slot = slot_acquire_timed(&st->spool, sc->name, sc->max_concurrent, wait_s * 1000);
	if (slot < 0) {
		if (errno != ETIMEDOUT)
			die_temp(qid, "cannot take a slot for scanner %s: %s", sc->name,
			         strerror(errno));
		char why[300];
		snprintf(why, sizeof why, "no slot of scanner %s came free within slot_wait = %d s",
		         sc->name, wait_s);
		log_warn(qid, "%s", why);
		for (size_t i = 0; i < m->n_parts; i++) {
			struct verdict_line *l =
			    verdicts_add(vs, (int)m->parts[i].index, sc->name, V_ERROR, "",
			                 "not-started", 0, rs->version, "clamd", why);
			l->backup = backup;
		}
		return;
	}
	clamd_policy_init(&pol, sc);
	size_t k = pool_place(&f->pool, (enum pool_balance)sc->balance, order, due, POOL_MAX_ADDRS);
	/* Trust decision: an address this process's own canary failed never gets mail,
	 * even if the shared file (advice) forgot it. */
	for (size_t j = 0; j < k; j++)
		if (!f->bad[order[j]] &&
		    (!due[j] || farm_probe(&f->pool, order[j], &pol, sc->canary) == 0))
			addrs[n++] = f->pool.addrs[order[j]];
	if (n == 0) {
		/* Every address is down: try them all anyway, in order, as before pools (a
		 * refused connect costs nothing, and one that is back is found at once). Those
		 * that failed their canary stay out: never mail to a bad engine. */
		k = pool_fallback(&f->pool, order, POOL_MAX_ADDRS, 0);
		for (size_t j = 0; j < k; j++)
			if (!f->bad[order[j]])
				addrs[n++] = f->pool.addrs[order[j]];
	}
	if (n == 0 && rs->degraded) {
		/* No address passed its canary: the scanner is degraded, and runs as any
		 * degraded scanner does (runner.c adds an error line to every part, so its
		 * mail is held, while what it finds still quarantines). */
		k = pool_fallback(&f->pool, order, POOL_MAX_ADDRS, 1);
		for (size_t j = 0; j < k; j++)
			addrs[n++] = f->pool.addrs[order[j]];
	}
	addrs[n] = NULL;
	if (n == 0) {
		farm_all_down(rs, &f->pool, m, vs, qid, backup);
		slot_release(slot);
		return;
	}
	int first = pool_index(&f->pool, addrs[0]);
	/* The cache key needs the database the first address runs now: a VERSION request
	 * per message, so that a RELOAD is seen before the next lookup. */
	/* Trust decision: a degraded scanner's results are never stored nor served. */
	struct cache *cache = rs->degraded ? NULL : farm_cache(st, f);
	char cver[128] = "", ckey[200] = "";
	if (cache) {
		/* On failure cver holds the reason: never a version for the record. */
		if (clamd_version(addrs[0], &pol, FARM_PROBE_MS, cver, sizeof cver) < 0)
			cver[0] = '\0';
		if (cver[0] == '\0' || !cache_version_usable(cver))
			cache = NULL;
		/* The key: engine and database (VERSION), and the canary generation. */
		else
			bsnprintf(ckey, sizeof ckey, "%s\n%llu", cver,
			          (unsigned long long)cache_generation(cache));
	}
	if (first >= 0)
		pool_begin(&f->pool, (size_t)first);
	clamd_session_init(&cs, addrs, &pol);
	cs.on_fail = farm_on_fail;
	cs.fail_ctx = &f->pool;
	for (size_t b = 0; b < m->n_parts; b += CLAMD_SESSION_BATCH) {
		size_t nb =
		    m->n_parts - b < CLAMD_SESSION_BATCH ? m->n_parts - b : CLAMD_SESSION_BATCH;
		struct clamd_result r[CLAMD_SESSION_BATCH], ro[CLAMD_SESSION_BATCH];
		int fds[CLAMD_SESSION_BATCH], open_fds[CLAMD_SESSION_BATCH];
		int cached[CLAMD_SESSION_BATCH], keyed[CLAMD_SESSION_BATCH];
		unsigned char keys[CLAMD_SESSION_BATCH][CACHE_KEY_LEN];
		size_t nopen = 0;
		int64_t t0 = now_ms_monotonic();
		/* Read-only and for this scan alone: in a session clamd gets these very
		 * descriptors and moves their offsets. */
		for (size_t i = 0; i < nb; i++) {
			char name[16];
			cached[i] = keyed[i] = 0;
			manifest_part_name(m->parts[b + i].index, name);
			fds[i] = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
			memset(&r[i], 0, sizeof r[i]);
			if (fds[i] < 0) {
				r[i].verdict = V_ERROR;
				bsnprintf(r[i].reply, sizeof r[i].reply, "open %s: %s", name,
				          strerror(errno));
				continue;
			}
			unsigned char sha[32];
			if (cache && cache_sha256_fd(fds[i], sha) == 0) {
				cache_key(keys[i], sha, sc->name, ckey);
				keyed[i] = 1;
				if (cache_get(cache, keys[i], &r[i].verdict, r[i].virus,
				              sizeof r[i].virus)) {
					cached[i] = 1;
					bsnprintf(r[i].addr, sizeof r[i].addr, "%s", addrs[0]);
					bsnprintf(r[i].reply, sizeof r[i].reply, "cached=1 %s",
					          r[i].verdict == V_CLEAN ? "OK" : "FOUND");
					close(fds[i]);
					fds[i] = -1;
					hits++;
					continue;
				}
				misses++;
			}
			open_fds[nopen++] = fds[i];
		}
		int64_t s0 = farm_now_us();
		clamd_session_scan_fds(&cs, open_fds, nopen, sc->timeout * 1000, ro);
		scan_us += farm_now_us() - s0;
		for (size_t i = 0; i < nb; i++)
			if (fds[i] >= 0)
				sent += farm_units(m->parts[b + i].size);
		for (size_t i = 0, j = 0; i < nb; i++)
			if (fds[i] >= 0) {
				r[i] = ro[j++];
				close(fds[i]);
				if (strcmp(r[i].addr, addrs[0]) != 0)
					all_first = 0;
				/* Only what the address whose version keyed it said. */
				if (keyed[i] && strcmp(r[i].addr, addrs[0]) == 0)
					cache_put(cache, keys[i], r[i].verdict, r[i].virus);
			}
		long ms = (long)(now_ms_monotonic() - t0);
		struct pool_file pf;
		int have = pool_snapshot(&f->pool, &pf) == 0;
		for (size_t i = 0; i < nb; i++) {
			char ver[128];
			farm_addr_version(&pf, have, &f->pool, r[i].addr, rs->version, ver,
			                  sizeof ver);
			/* cver was asked of addrs[0] for this message: fresher than the pool's. */
			if (cached[i] || (cver[0] && strcmp(r[i].addr, addrs[0]) == 0))
				bsnprintf(ver, sizeof ver, "%s", cver);
			else
				farm_observe(sc, ms);
			struct verdict_line *l = verdicts_add(
			    vs, (int)m->parts[b + i].index, sc->name, r[i].verdict, r[i].virus,
			    r[i].addr, cached[i] ? 0 : ms, ver, "clamd", r[i].reply);
			l->backup = backup;
			if (r[i].verdict != V_CLEAN)
				log_info(qid,
				         "scanner=%s part=%u verdict=%s virus=%s reply=%s ms=%ld",
				         sc->name, m->parts[b + i].index,
				         verdict_name(r[i].verdict), r[i].virus, r[i].reply, ms);
		}
		if (cache)
			cache_commit(cache);
	}
	clamd_session_close(&cs);
	if (first >= 0) {
		/* The time per part (of up to 256 KB) tells least-busy how fast this address
		 * is; only when it answered every part itself (a failover's time is the other
		 * address's). */
		if (all_first && sent > 0)
			pool_end_timed(&f->pool, (size_t)first, scan_us, sent);
		else
			pool_end(&f->pool, (size_t)first);
		/* A verdict from the first address clears its back-off. */
		for (size_t i = 0; i < vs->n; i++)
			if (strcmp(vs->lines[i].exit, addrs[0]) == 0 &&
			    (vs->lines[i].verdict == V_CLEAN ||
			     vs->lines[i].verdict == V_INFECTED)) {
				pool_ok(&f->pool, (size_t)first);
				break;
			}
	}
	farm_count("spoold_cache_lookups_total", sc->name, "hit", hits);
	farm_count("spoold_cache_lookups_total", sc->name, "miss", misses);
	slot_release(slot);
}
