/*
 * farm - a clamd scanner as a pool of addresses (lib/pool.h) with a verdict cache
 * (cache.h): placement, probes, health marks, per-address canaries. Used by runner.c
 * (the scan of one message) and canary.c (one canary per address).
 */
#ifndef SPOOLD_FARM_H
#define SPOOLD_FARM_H

#include <stddef.h>

#include "manifest.h"
#include "pool.h"
#include "runner.h"
#include "stage.h"
#include "verdict.h"

/* Scan every part of m (in dirfd) with the clamd scanner rs: cache first, then the pool
 * (placement, probes of due addresses, failover), recording one verdict line per part:
 * exit = the address, version = that address's VERSION line; a cached one says
 * "cached=1" first in its output. Every address down: all are tried in order (as
 * without a pool) and the message is held if none answers. Every address failed its
 * canary: the scanner is degraded and they are used as a degraded scanner is (runner.c
 * adds error lines, the mail is held; a virus found still quarantines). Nothing usable
 * at all: every part is an error naming each address, so the message is held. */
void farm_scan_clamd(struct stage *st, struct runner_scanner *rs, int dirfd,
                     const struct manifest *m, struct verdicts *vs, const char *qid, int backup);
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
