/*
 * cache - the verdict cache of a clamd scanner: an LMDB file run/cache.<scanner>.mdb
 * shared by every runner process of the node, surviving restarts.
 *
 * Key: sha256(sha256(part bytes) || scanner name || NUL || clamd's VERSION line). The
 * VERSION line carries the engine and the database version ("ClamAV 1.4.6/27471/..."),
 * so a new database makes every older entry unreachable at once (no TTL). A VERSION
 * line without a database version ("ClamAV 1.4.6": local signatures only) tells us
 * nothing about database changes: cache_version_usable refuses it and such a clamd is
 * never cached.
 *
 * Only clean and infected results are stored; never errors or unscannable marks, and
 * the canary never reads the cache (canary.c talks to clamd directly). Each value
 * repeats its key, so a damaged page can only miss, never answer for another part.
 *
 * Bounded: the map is cache_size bytes; when full, about an eighth of the entries (at
 * least as many as are waiting to be written), from a random point of the
 * (hash-ordered, so random) key space, are evicted.
 *
 * DIAGNOSTICS
 *   A cache that cannot be opened, is corrupt or fails later is only a cache: it is
 *   logged (warn), removed and made again once, and otherwise turned off for this
 *   process; the parts are scanned. Nothing here ever turns a miss into a verdict.
 */
#ifndef SPOOLD_CACHE_H
#define SPOOLD_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "verdict.h"

#define CACHE_KEY_LEN 32

struct cache {
	void *env; /* MDB_env *, NULL when off */
	unsigned dbi;
	char path[4096];
	/* Results queued by cache_put, written in one transaction by cache_commit. */
	struct cache_pending {
		unsigned char key[CACHE_KEY_LEN];
		unsigned char verdict;
		char virus[256];
	} * pending;
	size_t npending, cap;
};

/* Open (create) runpath/cache.<scanner>.mdb. 0, or -1 (logged; the cache is off). */
int cache_open(struct cache *c, const char *runpath, const char *scanner, uint64_t size);
void cache_close(struct cache *c);
/* Does this VERSION line name a database version? */
int cache_version_usable(const char *version);
/* sha256 of the whole file open on fd (pread from 0; the offset is left alone). 0/-1. */
int cache_sha256_fd(int fd, unsigned char out[32]);
void cache_key(unsigned char key[CACHE_KEY_LEN], const unsigned char part_sha[32],
               const char *scanner, const char *version);
/*
 * The generation: a counter in the cache itself, part of every key (farm.c puts it
 * after the VERSION line). It goes up whenever an address of the scanner fails its
 * canary, so that whatever was stored before (by an engine that may have been wrong
 * since, with a VERSION line that did not change: a clamd.conf edit, a broken restart)
 * is never served again. 0 when the cache is off or has none yet.
 */
uint64_t cache_generation(struct cache *c);
void cache_generation_bump(struct cache *c);
/* 1 and *v, virus set on a hit (V_CLEAN or V_INFECTED only), 0 on a miss. */
int cache_get(struct cache *c, const unsigned char key[CACHE_KEY_LEN], enum verdict *v, char *virus,
              size_t vlen);
/* Queue one result (only V_CLEAN / V_INFECTED are kept); cache_commit writes them. */
void cache_put(struct cache *c, const unsigned char key[CACHE_KEY_LEN], enum verdict v,
               const char *virus);
void cache_commit(struct cache *c);

#endif
