/*
 * promfile - spoold's Prometheus text file (see spoold.h).
 *
 * Stage processes write their own counters to run/stats/<prog>.<pid>.prom (lib/metrics).
 * Here every file is summed series by series. A file whose pid is dead is folded into a
 * carry kept in memory and removed, so a restarted stage does not make a counter go
 * backwards. The carry lives as long as spoold: when spoold itself restarts, counters
 * start again from zero, which Prometheus treats as an ordinary counter reset. Counts made
 * by a stage in the last second before it died (not yet flushed) are lost; metrics are an
 * aid, not an account.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "export.h"
#include "log.h"
#include "metrics.h"
#include "qstat.h"
#include "slot.h"
#include "spoold.h"
#include "util.h"

struct pseries {
	char *key; /* name{labels} exactly as the stage wrote it */
	double value;
};

struct pset {
	struct pseries *s;
	size_t n;
};

static struct pset prom_carry;

static struct pseries *pset_get(struct pset *p, const char *key, size_t keylen)
{
	for (size_t i = 0; i < p->n; i++)
		if (strlen(p->s[i].key) == keylen && memcmp(p->s[i].key, key, keylen) == 0)
			return &p->s[i];
	p->s = xrealloc(p->s, (p->n + 1) * sizeof *p->s);
	p->s[p->n].key = xstrndup(key, keylen);
	p->s[p->n].value = 0;
	return &p->s[p->n++];
}

static void pset_free(struct pset *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->s[i].key);
	free(p->s);
	p->s = NULL;
	p->n = 0;
}

/* Add every "key value" line of text to p. Lines that do not parse are skipped: the
 * files are ours, but a torn or foreign file must not break the whole metrics file. */
static void prom_parse_into(struct pset *p, const char *text)
{
	const char *line = text;
	while (*line) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		const char *sp = NULL;
		for (size_t i = len; i > 0; i--)
			if (line[i - 1] == ' ') {
				sp = line + i - 1;
				break;
			}
		if (line[0] != '#' && sp && sp > line && len < 1024) {
			char num[64];
			size_t vl = len - (size_t)(sp + 1 - line);
			if (vl > 0 && vl < sizeof num) {
				memcpy(num, sp + 1, vl);
				num[vl] = '\0';
				char *end;
				double v = strtod(num, &end);
				if (*end == '\0')
					pset_get(p, line, (size_t)(sp - line))->value += v;
			}
		}
		line = nl ? nl + 1 : line + len;
	}
}

static int prom_pid_alive(const char *fname)
{
	/* <prog>.<pid>.prom */
	const char *dot = strrchr(fname, '.');
	if (dot == NULL || strcmp(dot, ".prom") != 0)
		return -1;
	const char *p = dot;
	while (p > fname && p[-1] >= '0' && p[-1] <= '9')
		p--;
	if (p == dot || p == fname || p[-1] != '.')
		return -1;
	long pid = strtol(p, NULL, 10);
	if (pid <= 1)
		return -1;
	return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* The family a series belongs to, and whether it is part of a histogram. */
static void prom_family(const char *key, const struct pset *all, char *fam, size_t famlen,
                        int *hist)
{
	size_t n = strcspn(key, "{");
	if (n >= famlen)
		n = famlen - 1;
	memcpy(fam, key, n);
	fam[n] = '\0';
	*hist = 0;
	static const char *const suf[] = {"_bucket", "_sum", "_count"};
	for (size_t k = 0; k < ARRAY_LEN(suf); k++) {
		size_t sl = strlen(suf[k]);
		if (n <= sl || strcmp(fam + n - sl, suf[k]) != 0)
			continue;
		char probe[256];
		if (bsnprintf(probe, sizeof probe, "%.*s_bucket", (int)(n - sl), fam) < 0)
			continue;
		size_t pl = strlen(probe);
		for (size_t i = 0; i < all->n; i++)
			if (strncmp(all->s[i].key, probe, pl) == 0 && all->s[i].key[pl] == '{' &&
			    strstr(all->s[i].key + pl, "le=\"")) {
				fam[n - sl] = '\0';
				*hist = 1;
				return;
			}
	}
}

static void prom_value(struct buf *b, double v)
{
	if (v == (double)(long long)v)
		buf_printf(b, " %lld\n", (long long)v);
	else
		buf_printf(b, " %.6f\n", v);
}

static void prom_stage_series(struct buf *b, struct spool *sp)
{
	struct pset cur = {0};
	for (size_t i = 0; i < prom_carry.n; i++)
		pset_get(&cur, prom_carry.s[i].key, strlen(prom_carry.s[i].key))->value +=
		    prom_carry.s[i].value;
	int dfd = openat(sp->fd[SD_RUN], "stats", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (d == NULL && dfd >= 0)
		close(dfd);
	struct dirent *de;
	while (d && (de = readdir(d)) != NULL) {
		int alive = prom_pid_alive(de->d_name);
		if (alive < 0)
			continue;
		struct buf t;
		buf_init(&t);
		if (read_file_at(dirfd(d), de->d_name, &t, 1 << 22) == 0) {
			prom_parse_into(&cur, buf_cstr(&t));
			if (!alive) {
				/* Dead: keep its last values, then forget the file. */
				prom_parse_into(&prom_carry, buf_cstr(&t));
				if (unlinkat(dirfd(d), de->d_name, 0) < 0)
					log_warn(NULL, "cannot remove %s/run/stats/%s: %s",
					         sp->root, de->d_name, strerror(errno));
			}
		}
		buf_free(&t);
	}
	if (d)
		closedir(d);
	/* Families must be contiguous: emit family by family, in order of first appearance
	 * (which keeps each histogram's buckets in the order the stage wrote them). */
	char *done = xcalloc(cur.n ? cur.n : 1, 1);
	for (size_t i = 0; i < cur.n; i++) {
		if (done[i])
			continue;
		char fam[256], f2[256];
		int hist, h2;
		prom_family(cur.s[i].key, &cur, fam, sizeof fam, &hist);
		buf_printf(b, "# HELP %s spoold stage %s, summed over all stage processes\n", fam,
		           hist ? "histogram" : "counter");
		buf_printf(b, "# TYPE %s %s\n", fam, hist ? "histogram" : "counter");
		for (size_t j = i; j < cur.n; j++) {
			if (done[j])
				continue;
			prom_family(cur.s[j].key, &cur, f2, sizeof f2, &h2);
			if (strcmp(f2, fam) != 0)
				continue;
			done[j] = 1;
			buf_addstr(b, cur.s[j].key);
			prom_value(b, cur.s[j].value);
		}
	}
	free(done);
	pset_free(&cur);
}

static void prom_head(struct buf *b, const char *name, const char *type, const char *help)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The fleet's records waiting in export/ (docs/FLEET.md): a node whose database is away
 * shows here first. The drops are the stages' counter spoold_export_dropped_total. */
static void prom_fleet(struct buf *b, const struct conf *c, struct spool *sp)
{
	if (!c->fleet.enabled)
		return;
	int fd = export_dir_open(sp, 0);
	int64_t oldest = 0;
	long n = fd < 0 ? -1 : export_backlog(fd, &oldest);
	if (fd >= 0)
		close(fd);
	if (n < 0)
		return;
	prom_head(b, "spoold_export_backlog", "gauge", "Event records waiting in export/");
	buf_printf(b, "spoold_export_backlog %ld\n", n);
	prom_head(b, "spoold_export_oldest_seconds", "gauge",
	          "Age of the message of the oldest record waiting in export/ (0 when empty)");
	int64_t age = n > 0 && oldest > 0 ? (int64_t)time(NULL) - oldest : 0;
	buf_printf(b, "spoold_export_oldest_seconds %lld\n", (long long)(age < 0 ? 0 : age));
	/* The exporter's view (run/fleet.state): only where one runs. */
	struct buf s, v;
	buf_init(&s);
	buf_init(&v);
	if (c->fleet.conninfo[0] && read_file_at(sp->fd[SD_RUN], "fleet.state", &s, 4096) == 0) {
		const char *line = buf_cstr(&s);
		prom_head(b, "spoold_fleet_connected", "gauge",
		          "1 when the exporter is connected to the fleet database");
		buf_printf(b, "spoold_fleet_connected %d\n",
		           kv_find(line, "connected", &v) == 0 && strcmp(buf_cstr(&v), "1") == 0);
		if (kv_find(line, "pending_actions", &v) == 0 && buf_cstr(&v)[0] != '-') {
			prom_head(b, "spoold_fleet_actions_pending", "gauge",
			          "Release and delete actions waiting for this node");
			buf_printf(b, "spoold_fleet_actions_pending %s\n", buf_cstr(&v));
		}
	}
	buf_free(&s);
	buf_free(&v);
}

void prom_write(const struct conf *c, struct spool *sp, const struct sup_stage_info *st, size_t n,
                int config_ok)
{
	if (c->metrics.file == NULL || c->metrics.file[0] != '/')
		return;
	struct buf b;
	buf_init(&b);
	prom_stage_series(&b, sp);

	static const enum spool_dir dirs[] = {SD_INBOUND,    SD_INCOMING, SD_SCAN,   SD_ROUTE,
	                                      SD_QUARANTINE, SD_HOLD,     SD_BADMAIL};
	struct qstat qs[64];
	char labels[64][160];
	size_t nq = 0;
	for (size_t i = 0; i < ARRAY_LEN(dirs); i++) {
		qstat_dir(sp->fd[dirs[i]], dirs[i] != SD_INBOUND, &qs[nq]);
		snprintf(labels[nq++], sizeof labels[0], "%s", spool_dir_name(dirs[i]));
	}
	for (size_t i = 0; i < c->n_connectors && nq < ARRAY_LEN(qs); i++) {
		int ofd = spool_outbox_open(sp, c->connectors[i].name);
		qstat_dir(ofd, 1, &qs[nq]);
		if (ofd >= 0)
			close(ofd);
		char esc[128];
		metrics_label_escape(c->connectors[i].name, esc, sizeof esc);
		snprintf(labels[nq++], sizeof labels[0], "outbox/%s", esc);
	}
	prom_head(&b, "spoold_queue_messages", "gauge", "Entries in a spool state directory");
	for (size_t i = 0; i < nq; i++)
		buf_printf(&b, "spoold_queue_messages{queue=\"%s\"} %zu\n", labels[i], qs[i].count);
	prom_head(&b, "spoold_queue_bytes", "gauge", "Bytes in a spool state directory");
	for (size_t i = 0; i < nq; i++)
		buf_printf(&b, "spoold_queue_bytes{queue=\"%s\"} %llu\n", labels[i], qs[i].bytes);
	prom_head(&b, "spoold_queue_oldest_age_seconds", "gauge",
	          "Age of the oldest entry of a spool state directory (0 when empty)");
	for (size_t i = 0; i < nq; i++)
		buf_printf(&b, "spoold_queue_oldest_age_seconds{queue=\"%s\"} %lld\n", labels[i],
		           qs[i].oldest < 0 ? 0 : qs[i].oldest);

	prom_head(&b, "spoold_scanner_slots_busy", "gauge", "Scanner slots in use");
	for (size_t i = 0; i < c->n_scanners; i++) {
		char esc[128];
		metrics_label_escape(c->scanners[i].name, esc, sizeof esc);
		buf_printf(&b, "spoold_scanner_slots_busy{scanner=\"%s\"} %d\n", esc,
		           slot_count_busy(sp, c->scanners[i].name, c->scanners[i].max_concurrent));
	}
	prom_head(&b, "spoold_scanner_slots_max", "gauge", "Scanner slots configured");
	for (size_t i = 0; i < c->n_scanners; i++) {
		char esc[128];
		metrics_label_escape(c->scanners[i].name, esc, sizeof esc);
		buf_printf(&b, "spoold_scanner_slots_max{scanner=\"%s\"} %d\n", esc,
		           c->scanners[i].max_concurrent);
	}
	/* The canary's verdict on each scanner, from run/scanners (written by the
	 * scanner-runner): 1 ok, 0 degraded or not checked yet. An alert on 0 is an alert on
	 * held mail. */
	struct buf sc, v;
	buf_init(&sc);
	buf_init(&v);
	int have_sc = read_file_at(sp->fd[SD_RUN], "scanners", &sc, 1 << 20) == 0;
	prom_head(&b, "spoold_scanner_healthy", "gauge",
	          "1 when the scanner passed its canary, 0 when it is degraded or unchecked");
	for (size_t i = 0; i < c->n_scanners; i++) {
		char esc[128];
		int ok = 0;
		for (const char *line = have_sc ? buf_cstr(&sc) : ""; *line;) {
			const char *nl = strchr(line, '\n');
			size_t len = nl ? (size_t)(nl - line) : strlen(line);
			char one[4096];
			if (len < sizeof one && strncmp(line, "scanner ", 8) == 0) {
				memcpy(one, line, len);
				one[len] = '\0';
				if (kv_find(one, "name", &v) == 0 &&
				    strcmp(buf_cstr(&v), c->scanners[i].name) == 0 &&
				    kv_find(one, "state", &v) == 0)
					ok = strcmp(buf_cstr(&v), "ok") == 0;
			}
			line = nl ? nl + 1 : line + len;
		}
		metrics_label_escape(c->scanners[i].name, esc, sizeof esc);
		buf_printf(&b, "spoold_scanner_healthy{scanner=\"%s\"} %d\n", esc, ok);
	}
	buf_free(&sc);
	buf_free(&v);
	prom_fleet(&b, c, sp);
	prom_head(&b, "spoold_stage_instances", "gauge", "Stage instances configured");
	for (size_t i = 0; i < n; i++)
		buf_printf(&b, "spoold_stage_instances{stage=\"%s\"} %d\n", st[i].name,
		           st[i].instances);
	prom_head(&b, "spoold_stage_up", "gauge", "Stage instances running");
	for (size_t i = 0; i < n; i++)
		buf_printf(&b, "spoold_stage_up{stage=\"%s\"} %d\n", st[i].name, st[i].up);
	prom_head(&b, "spoold_stage_restarts_total", "counter",
	          "Stage restarts after a death, since spoold started");
	for (size_t i = 0; i < n; i++)
		buf_printf(&b, "spoold_stage_restarts_total{stage=\"%s\"} %d\n", st[i].name,
		           st[i].restarts);

	prom_head(&b, "spoold_config_ok", "gauge",
	          "0 when the last reload (SIGHUP) rejected the config file: the file on disk "
	          "is not the one in force");
	buf_printf(&b, "spoold_config_ok %d\n", config_ok);

	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", c->metrics.file);
	char *slash = strrchr(dir, '/');
	const char *base = slash + 1;
	*slash = '\0';
	int dfd = open(dir[0] ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	/* Atomic (tmp + rename): a scraper never reads half a file. With metrics.group the
	 * file is 0640 with that group (spoold keeps it as a supplementary group when it drops
	 * root), for a collector that should read it and nothing else. */
	gid_t mgid = c->metrics.group && c->metrics.group[0] ? privs_metrics_gid(c) : (gid_t)-1;
	if (dfd < 0 || write_file_atomic(dfd, base, b.data ? b.data : "", b.len, 0640) < 0 ||
	    (mgid != (gid_t)-1 && fchownat(dfd, base, (uid_t)-1, mgid, AT_SYMLINK_NOFOLLOW) < 0))
		log_warn(NULL, "cannot write metrics file %s: %s", c->metrics.file,
		         strerror(errno));
	if (dfd >= 0)
		close(dfd);
	buf_free(&b);
}
