/*
 * qstat - how much is in a spool state directory: count, bytes, oldest age. Shared by
 * spoolctl status/ls and spoold's metrics file, so both report the same numbers.
 *
 * Read-only and best effort: an entry that vanishes while it is being measured (a stage
 * moved it on) is skipped, never an error.
 */
#ifndef SPOOLD_QSTAT_H
#define SPOOLD_QSTAT_H

#include <stddef.h>
#include <time.h>

struct qstat {
	size_t count;
	unsigned long long bytes;
	long long oldest; /* age in seconds of the oldest entry, -1 if empty */
};

/* Total size of the regular files below parent/name (or of name itself), without
 * following symlinks. Bounded like remove_tree_at (UTIL_TREE_DEPTH_MAX levels,
 * UTIL_TREE_ENTRIES_MAX names): a larger tree is measured only that far. */
unsigned long long qstat_tree_bytes(int parent, const char *name);
/* Age in seconds of an entry: from the queue ID (intake time) when name is one, else from
 * the mtime in st_mtime_s. Never negative. */
long long qstat_age(const char *name, time_t mtime, time_t now);
/* Measure one state directory; qids: only queue-ID names (every directory but inbound). */
void qstat_dir(int dirfd, int qids, struct qstat *qs);

#endif
