/*
 * farm - the clamd backend of scanner.h (scanner_ops_clamd): a clamd scanner as a pool
 * of addresses (lib/pool.h) with a verdict cache (cache.h): placement, probes, health
 * marks, per-address canaries. Its scan is the scan of one message; its check asks one
 * address, never the pool nor the cache. What follows is for canary.c, which checks
 * each address of a pool on its own.
 */
#ifndef SPOOLD_FARM_H
#define SPOOLD_FARM_H

#include <stddef.h>

#include "manifest.h"
#include "pool.h"
#include "scanner.h"
#include "stage.h"
#include "verdict.h"

/* The pool of a clamd scanner (opened on first use; its fd may be -1: no memory). */
struct pool *farm_pool(struct stage *st, const struct conf_scanner *sc);
/* Does any address of this clamd scanner wait for a canary (failed one, or restarted
 * with another version)? */
int farm_canary_wanted(struct stage *st, const struct conf_scanner *sc);
/* Record addrs[i]'s own canary result: in the shared pool file, and in this process,
 * which never places mail on an address its own canary failed, whatever the shared
 * file says (a file started afresh by another runner, or torn by a crash, cannot let a
 * bad engine back in). */
void farm_canary_mark(struct stage *st, const struct conf_scanner *sc, size_t i, int ok,
                      const char *version, const char *why);
/* Does any address now answer VERSION with another line than its last canary saw (a
 * RELOAD or a restart on one address only)? One VERSION request per address. */
int farm_versions_changed(struct stage *st, const struct conf_scanner *sc);

#endif
