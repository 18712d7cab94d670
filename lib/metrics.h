/*
 * metrics - per-process counters and histograms, for spoold's Prometheus file.
 *
 * Each stage process counts in memory and metrics_flush() writes its series to
 * run/stats/<prog>.<pid>.prom (atomically, Prometheus text format, no HELP/TYPE lines);
 * spoold sums the files of live processes into the metrics file. Counting never fails
 * and never blocks: metrics are an aid, not part of the commit path.
 *
 * name: a Prometheus metric name; labels: the inside of {...}, already formatted, e.g.
 * "verdict=\"clean\",scanner=\"clamscan\"" (use metrics_label_escape for values), or "".
 */
#ifndef SPOOLD_METRICS_H
#define SPOOLD_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct spool;

void metrics_inc(const char *name, const char *labels, uint64_t delta);
/* Histogram observation in seconds, buckets 1ms .. 60s. */
void metrics_observe(const char *name, const char *labels, double seconds);
/* Write run/stats/<prog>.<pid>.prom if anything changed since the last flush. */
void metrics_flush(struct spool *sp, const char *prog);
/* Escape a label value (backslash, quote, newline) into out. */
void metrics_label_escape(const char *in, char *out, size_t len);

#endif
