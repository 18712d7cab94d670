/*
 * metrics - see metrics.h.
 */
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"
#include "util.h"

static const double metrics_buckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60};
#define N_BUCKETS (sizeof metrics_buckets / sizeof metrics_buckets[0])

struct series {
	char *name;
	char *labels;
	int histogram;
	uint64_t value;             /* counter */
	uint64_t bucket[N_BUCKETS]; /* histogram, cumulative at output */
	uint64_t count;
	double sum;
};

static struct series *metrics_s;
static size_t metrics_n;
static int metrics_dirty;

static struct series *metrics_find(const char *name, const char *labels, int histogram)
{
	for (size_t i = 0; i < metrics_n; i++)
		if (strcmp(metrics_s[i].name, name) == 0 &&
		    strcmp(metrics_s[i].labels, labels) == 0)
			return &metrics_s[i];
	metrics_s = xrealloc(metrics_s, (metrics_n + 1) * sizeof *metrics_s);
	struct series *s = &metrics_s[metrics_n++];
	memset(s, 0, sizeof *s);
	s->name = xstrdup(name);
	s->labels = xstrdup(labels ? labels : "");
	s->histogram = histogram;
	return s;
}

void metrics_inc(const char *name, const char *labels, uint64_t delta)
{
	metrics_find(name, labels ? labels : "", 0)->value += delta;
	metrics_dirty = 1;
}

void metrics_observe(const char *name, const char *labels, double seconds)
{
	struct series *s = metrics_find(name, labels ? labels : "", 1);
	for (size_t b = 0; b < N_BUCKETS; b++)
		if (seconds <= metrics_buckets[b]) {
			s->bucket[b]++;
			break;
		}
	s->count++;
	s->sum += seconds;
	metrics_dirty = 1;
}

void metrics_label_escape(const char *in, char *out, size_t len)
{
	size_t n = 0;
	for (; *in && n + 3 < len; in++) {
		if (*in == '\\' || *in == '"') {
			out[n++] = '\\';
			out[n++] = *in;
		} else if (*in == '\n') {
			out[n++] = '\\';
			out[n++] = 'n';
		} else {
			out[n++] = *in;
		}
	}
	out[n] = '\0';
}

static void metrics_labels(struct buf *b, const char *labels, const char *extra)
{
	if (!labels[0] && !extra)
		return;
	buf_printf(b, "{%s%s%s}", labels, labels[0] && extra ? "," : "", extra ? extra : "");
}

void metrics_flush(struct spool *sp, const char *prog)
{
	if (!metrics_dirty)
		return;
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < metrics_n; i++) {
		struct series *s = &metrics_s[i];
		if (!s->histogram) {
			buf_addstr(&b, s->name);
			metrics_labels(&b, s->labels, NULL);
			buf_printf(&b, " %llu\n", (unsigned long long)s->value);
			continue;
		}
		uint64_t cum = 0;
		for (size_t k = 0; k < N_BUCKETS; k++) {
			char le[32];
			cum += s->bucket[k];
			snprintf(le, sizeof le, "le=\"%g\"", metrics_buckets[k]);
			buf_printf(&b, "%s_bucket", s->name);
			metrics_labels(&b, s->labels, le);
			buf_printf(&b, " %llu\n", (unsigned long long)cum);
		}
		buf_printf(&b, "%s_bucket", s->name);
		metrics_labels(&b, s->labels, "le=\"+Inf\"");
		buf_printf(&b, " %llu\n%s_sum", (unsigned long long)s->count, s->name);
		metrics_labels(&b, s->labels, NULL);
		buf_printf(&b, " %.6f\n%s_count", s->sum, s->name);
		metrics_labels(&b, s->labels, NULL);
		buf_printf(&b, " %llu\n", (unsigned long long)s->count);
	}
	int dfd = openat(sp->fd[SD_RUN], "stats", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 && errno == ENOENT && mkdirat(sp->fd[SD_RUN], "stats", 0770) == 0)
		dfd = openat(sp->fd[SD_RUN], "stats", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	char name[128];
	snprintf(name, sizeof name, "%s.%ld.prom", prog, (long)getpid());
	/* Not on the commit path and not worth a sync: after a crash the counters start
	 * again anyway. Replaced whole, so a reader never sees half a file. */
	if (dfd < 0 || write_file_replace(dfd, name, b.data ? b.data : "", b.len, 0640) < 0)
		log_warn(NULL, "cannot write %s/run/stats/%s: %s", sp->root, name, strerror(errno));
	else
		metrics_dirty = 0;
	if (dfd >= 0)
		close(dfd);
	buf_free(&b);
}
