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
#include "scanner.h"
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

static void farm_count(const char *metric, const char *scanner, const char *result, size_t n)
{
	char esc[256], labels[400];
	if (n == 0)
		return;
	metrics_label_escape(scanner, esc, sizeof esc);
	bsnprintf(labels, sizeof labels, "scanner=\"%s\",result=\"%s\"", esc, result);
	metrics_inc(metric, labels, n);
}

/* One clamd pass over a message: what its batches share. */
struct farm_run {
	struct scanner *s;
	struct scan_pass *p;
	struct farm_state *f;
	struct clamd_policy pol;
	struct clamd_session cs;
	char *addrs[POOL_MAX_ADDRS + 1]; /* placed, NULL-terminated; addrs[0] is asked first */
	size_t n;
	struct cache *cache; /* NULL: no cache for this message */
	char cver[128];      /* addrs[0]'s VERSION line now, when the cache is used */
	char ckey[200];      /* the cache key's version part: cver and the generation */
	size_t hits, misses, sent;
	int64_t scan_us;
	int all_first; /* addrs[0] answered every part itself */
};

/* Every part of the message gets the same error line (no slot, nothing usable). */
static void farm_fail_all(struct farm_run *fr, const char *exit, const char *why)
{
	const struct manifest *m = fr->p->m;
	for (size_t i = 0; i < m->n_parts; i++)
		scan_pass_add(fr->p, fr->s, (int)m->parts[i].index, V_ERROR, "", exit, 0,
		              fr->s->version, "clamd", why, 0);
}

/* The message cannot be placed: one error per part naming every address and why. */
static void farm_all_down(struct farm_run *fr)
{
	struct pool *p = &fr->f->pool;
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
	farm_fail_all(fr, "pool", reply);
	log_warn(fr->p->qid, "scanner=%s %s; the message will be held", fr->s->conf->name, reply);
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

/* The addresses for this message, in the order they are asked (fr->addrs, fr->n). */
static void farm_addrs_pick(struct farm_run *fr)
{
	const struct conf_scanner *sc = fr->s->conf;
	struct farm_state *f = fr->f;
	size_t order[POOL_MAX_ADDRS];
	int due[POOL_MAX_ADDRS];
	size_t n = 0;
	size_t k = pool_place(&f->pool, (enum pool_balance)sc->balance, order, due, POOL_MAX_ADDRS);
	/* Trust decision: an address this process's own canary failed never gets mail,
	 * even if the shared file (advice) forgot it. */
	for (size_t j = 0; j < k; j++)
		if (!f->bad[order[j]] &&
		    (!due[j] || farm_probe(&f->pool, order[j], &fr->pol, sc->canary) == 0))
			fr->addrs[n++] = f->pool.addrs[order[j]];
	if (n == 0) {
		/* Every address is down: try them all anyway, in order, as before pools (a
		 * refused connect costs nothing, and one that is back is found at once). Those
		 * that failed their canary stay out: never mail to a bad engine. */
		k = pool_fallback(&f->pool, order, POOL_MAX_ADDRS, 0);
		for (size_t j = 0; j < k; j++)
			if (!f->bad[order[j]])
				fr->addrs[n++] = f->pool.addrs[order[j]];
	}
	if (n == 0 && fr->s->degraded) {
		/* No address passed its canary: the scanner is degraded, and runs as any
		 * degraded scanner does (runner.c adds an error line to every part, so its
		 * mail is held, while what it finds still quarantines). */
		k = pool_fallback(&f->pool, order, POOL_MAX_ADDRS, 1);
		for (size_t j = 0; j < k; j++)
			fr->addrs[n++] = f->pool.addrs[order[j]];
	}
	fr->addrs[n] = NULL;
	fr->n = n;
}

/* The cache for this message, if any: keyed by the database the first address runs now,
 * a VERSION request per message, so that a RELOAD is seen before the next lookup. */
static void farm_cache_prepare(struct farm_run *fr, struct stage *st)
{
	/* Trust decision: a degraded scanner's results are never stored nor served. */
	fr->cache = fr->s->degraded ? NULL : farm_cache(st, fr->f);
	fr->cver[0] = fr->ckey[0] = '\0';
	if (fr->cache == NULL)
		return;
	/* On failure cver holds the reason: never a version for the record. */
	if (clamd_version(fr->addrs[0], &fr->pol, FARM_PROBE_MS, fr->cver, sizeof fr->cver) < 0)
		fr->cver[0] = '\0';
	if (fr->cver[0] == '\0' || !cache_version_usable(fr->cver))
		fr->cache = NULL;
	/* The key: engine and database (VERSION), and the canary generation. */
	else
		bsnprintf(fr->ckey, sizeof fr->ckey, "%s\n%llu", fr->cver,
		          (unsigned long long)cache_generation(fr->cache));
}

/* Open part b + i for the batch, answering from the cache what it knows. 1: it must be
 * sent to clamd (fds[i] open); 0: answered (a cache hit, or it could not be opened). */
static int farm_part_open(struct farm_run *fr, size_t part, int *fd, struct clamd_result *r,
                          int *cached, int *keyed, unsigned char key[CACHE_KEY_LEN])
{
	const struct manifest *m = fr->p->m;
	char name[16];
	*cached = *keyed = 0;
	manifest_part_name(m->parts[part].index, name);
	/* Read-only and for this scan alone: in a session clamd gets these very descriptors
	 * and moves their offsets. */
	*fd = openat(fr->p->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	memset(r, 0, sizeof *r);
	if (*fd < 0) {
		r->verdict = V_ERROR;
		bsnprintf(r->reply, sizeof r->reply, "open %s: %s", name, strerror(errno));
		return 0;
	}
	unsigned char sha[32];
	if (fr->cache && cache_sha256_fd(*fd, sha) == 0) {
		cache_key(key, sha, fr->s->conf->name, fr->ckey);
		*keyed = 1;
		if (cache_get(fr->cache, key, &r->verdict, r->virus, sizeof r->virus)) {
			*cached = 1;
			bsnprintf(r->addr, sizeof r->addr, "%s", fr->addrs[0]);
			bsnprintf(r->reply, sizeof r->reply, "cached=1 %s",
			          r->verdict == V_CLEAN ? "OK" : "FOUND");
			close(*fd);
			*fd = -1;
			fr->hits++;
			return 0;
		}
		fr->misses++;
	}
	return 1;
}

/* The verdict lines of one batch, with the version of the address that answered each. */
static void farm_batch_record(struct farm_run *fr, const size_t *ix, size_t nb,
                              const struct clamd_result *r, const int *cached, long ms)
{
	const struct conf_scanner *sc = fr->s->conf;
	const struct manifest *m = fr->p->m;
	struct pool_file pf;
	int have = pool_snapshot(&fr->f->pool, &pf) == 0;
	for (size_t i = 0; i < nb; i++) {
		char ver[128];
		farm_addr_version(&pf, have, &fr->f->pool, r[i].addr, fr->s->version, ver,
		                  sizeof ver);
		/* cver was asked of addrs[0] for this message: fresher than the pool's. */
		if (cached[i] || (fr->cver[0] && strcmp(r[i].addr, fr->addrs[0]) == 0))
			bsnprintf(ver, sizeof ver, "%s", fr->cver);
		else
			scanner_observe(sc, ms);
		scan_pass_add(fr->p, fr->s, (int)m->parts[ix[i]].index, r[i].verdict, r[i].virus,
		              r[i].addr, cached[i] ? 0 : ms, ver, "clamd", r[i].reply, 0);
		if (r[i].verdict != V_CLEAN)
			log_info(fr->p->qid,
			         "scanner=%s part=%u verdict=%s virus=%s reply=%s ms=%ld", sc->name,
			         m->parts[ix[i]].index, verdict_name(r[i].verdict), r[i].virus,
			         r[i].reply, ms);
	}
}

/* The parts ix[0 .. nb - 1] (indexes into the manifest's parts, at most
 * CLAMD_SESSION_BATCH): the cache first, the rest through the session, pipelined; only
 * what the address whose version keyed it said is stored. */
static void farm_batch(struct farm_run *fr, const size_t *ix, size_t nb)
{
	struct clamd_result r[CLAMD_SESSION_BATCH], ro[CLAMD_SESSION_BATCH];
	int fds[CLAMD_SESSION_BATCH], open_fds[CLAMD_SESSION_BATCH];
	int cached[CLAMD_SESSION_BATCH], keyed[CLAMD_SESSION_BATCH];
	unsigned char keys[CLAMD_SESSION_BATCH][CACHE_KEY_LEN];
	size_t nopen = 0;
	int64_t t0 = now_ms_monotonic();
	for (size_t i = 0; i < nb; i++)
		if (farm_part_open(fr, ix[i], &fds[i], &r[i], &cached[i], &keyed[i], keys[i]))
			open_fds[nopen++] = fds[i];
	int64_t s0 = farm_now_us();
	clamd_session_scan_fds(&fr->cs, open_fds, nopen, fr->s->conf->timeout * 1000, ro);
	fr->scan_us += farm_now_us() - s0;
	for (size_t i = 0; i < nb; i++)
		if (fds[i] >= 0)
			fr->sent += farm_units(fr->p->m->parts[ix[i]].size);
	for (size_t i = 0, j = 0; i < nb; i++)
		if (fds[i] >= 0) {
			r[i] = ro[j++];
			close(fds[i]);
			if (strcmp(r[i].addr, fr->addrs[0]) != 0)
				fr->all_first = 0;
			/* Only what the address whose version keyed it said. */
			if (keyed[i] && strcmp(r[i].addr, fr->addrs[0]) == 0)
				cache_put(fr->cache, keys[i], r[i].verdict, r[i].virus);
		}
	farm_batch_record(fr, ix, nb, r, cached, (long)(now_ms_monotonic() - t0));
	if (fr->cache)
		cache_commit(fr->cache);
}

/* Tell the pool how the first address did: its time per part (of up to 256 KB) for
 * least-busy, only when it answered every part itself (a failover's time is the other
 * address's); and a verdict from it clears its back-off. */
static void farm_pool_finish(struct farm_run *fr, int first)
{
	struct pool *p = &fr->f->pool;
	const struct verdicts *vs = fr->p->vs;
	if (first < 0)
		return;
	if (fr->all_first && fr->sent > 0)
		pool_end_timed(p, (size_t)first, fr->scan_us, fr->sent);
	else
		pool_end(p, (size_t)first);
	for (size_t i = 0; i < vs->n; i++)
		if (strcmp(vs->lines[i].exit, fr->addrs[0]) == 0 &&
		    (vs->lines[i].verdict == V_CLEAN || vs->lines[i].verdict == V_INFECTED)) {
			pool_ok(p, (size_t)first);
			break;
		}
}

/* The infected verdict of this pass on a decoded part, if any (its line), else NULL. */
static const struct verdict_line *farm_infected_line(const struct farm_run *fr)
{
	const struct verdicts *vs = fr->p->vs;
	for (size_t i = 0; i < vs->n; i++)
		if (vs->lines[i].verdict == V_INFECTED &&
		    strcmp(vs->lines[i].scanner, fr->s->conf->name) == 0 &&
		    vs->lines[i].backup == fr->p->backup)
			return &vs->lines[i];
	return NULL;
}

/*
 * Every part of the message, the raw part last. Why this order: clamd re-extracts every
 * attachment from the raw message with its own MIME parser (that is the point of the raw
 * scan: clamd's reading, not GMime's), and its clean cache (engine-wide, keyed by the MD5
 * of the bytes) answers for every extracted object it has scanned clean before. Sent in
 * the same pipelined batch, the raw request races the decoded parts on clamd's threads,
 * so whether an attachment is scanned once or twice depends on timing (the parts usually
 * finish first, clamd's MIME parse of the raw message being slow, but nothing makes sure);
 * sent after every decoded part has its reply, each attachment clamd extracts the same way
 * GMime did is a cache hit. What clamd extracts differently (a parser differential) is not in the
 * cache and is scanned in full: the raw scan loses nothing. The decoded parts still go pipelined,
 * side by side on clamd's threads.
 *
 * Trust decision: when this scanner already found a decoded part infected, the raw part
 * is not sent. The message is then quarantined, discarded or stripped whatever the raw
 * scan says (router/decide.c: any infected line decides), and a stripped message is a
 * new message, split and scanned again in full, raw part included; so the raw scan could
 * only add a virus name to the report. Its line says so, as an error (never clean), with
 * exit=skipped and the part and virus that decided: the record stays complete and honest.
 */
static void farm_scan_parts(struct farm_run *fr)
{
	const struct manifest *m = fr->p->m;
	size_t ix[CLAMD_SESSION_BATCH], nb = 0, raw = m->n_parts;
	for (size_t i = 0; i < m->n_parts; i++) {
		/* One raw part at most (docs/MANIFEST.md: the last); another would be scanned
		 * as a decoded part, in the batches. */
		if (m->parts[i].found == FOUND_RAW && raw == m->n_parts) {
			raw = i;
			continue;
		}
		ix[nb++] = i;
		if (nb == CLAMD_SESSION_BATCH) {
			farm_batch(fr, ix, nb);
			nb = 0;
		}
	}
	if (nb > 0)
		farm_batch(fr, ix, nb);
	if (raw == m->n_parts)
		return;
	const struct verdict_line *inf = farm_infected_line(fr);
	if (inf != NULL) {
		char why[600];
		bsnprintf(why, sizeof why,
		          "not scanned: part %d is infected (%.200s); a release would deliver "
		          "this part unscanned",
		          inf->part, inf->virus);
		scan_pass_add(fr->p, fr->s, (int)m->parts[raw].index, V_ERROR, "",
		              SCAN_EXIT_SKIPPED, 0, fr->s->version, "clamd", why, 1);
		return;
	}
	ix[0] = raw;
	farm_batch(fr, ix, 1);
}

/*
 * The clamd backend's scan: every part of the message in one go, cache first, then the
 * pool (placement, probes of due addresses, failover), one verdict line per part:
 * exit = the address, version = that address's VERSION line; a cached one says
 * "cached=1" first in its output. Every address down: all are tried in order (as
 * without a pool) and the message is held if none answers. Every address failed its
 * canary: the scanner is degraded and they are used as a degraded scanner is (runner.c
 * adds error lines, the mail is held; a virus found still quarantines). Nothing usable
 * at all: every part is an error naming each address, so the message is held.
 */
static int farm_scan(struct scanner *s, struct scan_pass *p)
{
	const struct conf_scanner *sc = s->conf;
	struct farm_run fr;
	char why[300];
	memset(p->todo, 0, p->m->n_parts);
	if (p->m->n_parts == 0)
		return 1;
	memset(&fr, 0, sizeof fr);
	fr.s = s;
	fr.p = p;
	fr.all_first = 1;
	fr.f = farm_state(p->st, sc);
	int slot = scanner_slot_take(p->st, sc, p->qid, why, sizeof why);
	if (slot < 0) {
		farm_fail_all(&fr, "not-started", why);
		return 1;
	}
	clamd_policy_init(&fr.pol, sc);
	farm_addrs_pick(&fr);
	if (fr.n == 0) {
		farm_all_down(&fr);
		slot_release(slot);
		return 1;
	}
	int first = pool_index(&fr.f->pool, fr.addrs[0]);
	farm_cache_prepare(&fr, p->st);
	if (first >= 0)
		pool_begin(&fr.f->pool, (size_t)first);
	clamd_session_init(&fr.cs, fr.addrs, &fr.pol);
	fr.cs.on_fail = farm_on_fail;
	fr.cs.fail_ctx = &fr.f->pool;
	farm_scan_parts(&fr);
	clamd_session_close(&fr.cs);
	farm_pool_finish(&fr, first);
	farm_count("spoold_cache_lookups_total", sc->name, "hit", fr.hits);
	farm_count("spoold_cache_lookups_total", sc->name, "miss", fr.misses);
	slot_release(slot);
	return 1;
}

/* The canary's check of one file at one address, never the pool: each address passes
 * its own canary, and the cache is never asked. */
static void farm_check(struct scanner *s, struct stage *st, const char *dir, int dirfd,
                       const char *file, const char *addr, struct scanner_probe *out)
{
	const struct conf_scanner *sc = s->conf;
	struct clamd_result r;
	struct clamd_policy pol;
	struct buf esc;
	char why[300];
	int fd = openat(dirfd, file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		out->verdict = V_ERROR;
		bsnprintf(out->unasked, sizeof out->unasked, "cannot open %.200s/%s: %s", dir, file,
		          strerror(errno));
		return;
	}
	int slot = scanner_slot_take(st, sc, NULL, why, sizeof why);
	if (slot < 0) {
		memset(&r, 0, sizeof r);
		r.verdict = V_ERROR;
		bsnprintf(r.addr, sizeof r.addr, "%s", addr);
		bsnprintf(r.reply, sizeof r.reply, "%s", why);
	} else {
		clamd_policy_init(&pol, sc);
		clamd_scan_fd(addr, fd, &pol, sc->timeout * 1000, &r);
		slot_release(slot);
	}
	close(fd);
	out->verdict = r.verdict;
	bsnprintf(out->virus, sizeof out->virus, "%s", r.virus);
	buf_init(&esc);
	escape_bytes(&esc, r.reply, strlen(r.reply), 200);
	bsnprintf(out->detail, sizeof out->detail, "addr=%s reply=%s", r.addr, buf_cstr(&esc));
	buf_free(&esc);
}

/* clamd's VERSION line (engine and database), from the first address that answers. */
static void farm_version(const struct scanner *s, char *out, size_t len)
{
	struct clamd_policy pol;
	clamd_policy_init(&pol, s->conf);
	if (clamd_version_any(s->conf->clamd_addrs, &pol, 5000, out, len) == 0)
		return;
	snprintf(out, len, "unknown");
}

const struct scanner_ops scanner_ops_clamd = {
    .mode = "clamd",
    .scan = farm_scan,
    .check = farm_check,
    .version = farm_version,
    .checks_missing = 0,
};
