/*
 * spoolctl status [--json] - queue depths, bytes and oldest ages, the stages, scanner
 * slots and scanner health.
 *
 * Stages come from spoold's run/status (a pid is shown only while spoold is alive);
 * scanner health from run/scanners, written by the scanner-runner's canary ("unknown"
 * when absent); for a clamd scanner, its pool from run/pool.<scanner> (each address up,
 * down, probe-due or bad, its version, requests in flight and errors). A loud warning is printed
 * when router.hold_expiry_action is "deliver": held messages that expire are then delivered
 * unscanned, and when spoold's last reload rejected the config file (run/status "config ok=0").
 *
 * Exit status, as systemctl status: 0 all well; 1 spoold runs but needs the
 * administrator (config rejected, a scanner not ok); 3 spoold is not running (the scanner
 * health shown is then only the last one recorded, marked stale).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "ctl.h"
#include "export.h"
#include "log.h"
#include "pool.h"
#include "qstat.h"
#include "slot.h"
#include "spool.h"
#include "util.h"

struct dirstat {
	char label[300];
	struct qstat q;
};

struct health {
	char state[32];
	long long since;
	struct buf reason;
};

static void st_json_str(const char *s)
{
	struct buf e;
	buf_init(&e);
	json_escape(&e, s, strlen(s));
	printf("\"%s\"", buf_cstr(&e));
	buf_free(&e);
}

/* A clamd scanner's pool (run/pool.<scanner>, lib/pool.h): each address up or down, its
 * version, requests in flight, errors. Nothing when the file is absent (no mail yet). */
static void st_pool(const struct conf_scanner *s, int rundir, int json)
{
	struct pool_file pf;
	if (s->type != SCANNER_CLAMD)
		return;
	int have = pool_read(rundir, s->name, &pf) == 0;
	if (json) {
		printf(",\"balance\":");
		st_json_str(pool_balance_name((enum pool_balance)s->balance));
		printf(",\"pool\":[");
	} else {
		printf("    balance %s\n", pool_balance_name((enum pool_balance)s->balance));
	}
	for (size_t i = 0; have && i < pf.n; i++) {
		const struct pool_addr *a = &pf.a[i];
		int64_t now = now_us_wall() / 1000;
		const char *state = a->canary_bad                       ? "bad"
		                    : a->down && a->down_until_ms > now ? "down"
		                    : a->down                           ? "probe-due"
		                                                        : "up";
		if (json) {
			printf("%s{\"address\":", i ? "," : "");
			st_json_str(a->addr);
			printf(",\"state\":");
			st_json_str(state);
			printf(",\"version\":");
			st_json_str(a->version);
			printf(",\"in_flight\":%d,\"errors\":%llu,\"requests\":%llu,\"reason\":",
			       pool_addr_inflight(a), (unsigned long long)a->errors,
			       (unsigned long long)a->requests);
			st_json_str(a->reason);
			printf("}");
		} else {
			struct buf e;
			buf_init(&e);
			escape_bytes(&e, a->addr, strlen(a->addr), 256);
			printf("    %-40s %-9s in_flight %d errors %llu requests %llu",
			       buf_cstr(&e), state, pool_addr_inflight(a),
			       (unsigned long long)a->errors, (unsigned long long)a->requests);
			buf_reset(&e);
			escape_bytes(&e, a->version, strlen(a->version), 128);
			printf(" version %s", e.len ? buf_cstr(&e) : "-");
			if (a->reason[0]) {
				buf_reset(&e);
				escape_bytes(&e, a->reason, strlen(a->reason), 256);
				printf(" (%s)", buf_cstr(&e));
			}
			printf("\n");
			buf_free(&e);
		}
	}
	if (json)
		printf("]");
}

/* The health line of scanner name in run/scanners, if the file is complete ("end"). */
static void st_health(const char *text, const char *name, struct health *h)
{
	struct buf v;
	buf_init(&v);
	snprintf(h->state, sizeof h->state, "unknown");
	h->since = 0;
	buf_reset(&h->reason);
	if (text == NULL || strstr(text, "\nend") == NULL) {
		if (!(text && strncmp(text, "end", 3) == 0))
			goto out;
	}
	for (const char *line = text; line && *line;) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		char one[4096];
		if (len < sizeof one && strncmp(line, "scanner ", 8) == 0) {
			memcpy(one, line, len);
			one[len] = '\0';
			if (kv_find(one, "name", &v) == 0 && strcmp(buf_cstr(&v), name) == 0) {
				if (kv_find(one, "state", &v) == 0)
					snprintf(h->state, sizeof h->state, "%s", buf_cstr(&v));
				if (kv_find(one, "since", &v) == 0)
					h->since = strtoll(buf_cstr(&v), NULL, 10);
				kv_find(one, "reason", &h->reason);
			}
		}
		line = nl ? nl + 1 : NULL;
	}
out:
	buf_free(&v);
}

/* The exporter's last word on the database (run/fleet.state). */
static void st_fleet_state(int rundir, const struct conf *c)
{
	struct buf s, v;
	buf_init(&s);
	buf_init(&v);
	if (c->fleet.conninfo[0] && read_file_at(rundir, "fleet.state", &s, 4096) == 0) {
		const char *line = buf_cstr(&s);
		int up = kv_find(line, "connected", &v) == 0 && strcmp(buf_cstr(&v), "1") == 0;
		long long since =
		    kv_find(line, "since", &v) == 0 ? strtoll(buf_cstr(&v), NULL, 10) : 0;
		long pending =
		    kv_find(line, "pending_actions", &v) == 0 ? strtol(buf_cstr(&v), NULL, 10) : -1;
		printf("fleet database: %s for %llds", up ? "connected" : "UNAVAILABLE",
		       (long long)time(NULL) - since);
		if (pending >= 0)
			printf(", %ld action(s) pending", pending);
		printf("\n");
	}
	buf_free(&s);
	buf_free(&v);
}

/* What spoolctl status reports, gathered before any of it is printed. */
struct st_report {
	struct dirstat ds[64];
	size_t nd;
	int export_full; /* export/ at fleet.max_backlog: new records are dropped */
	struct buf st;   /* run/status */
	struct buf sc;   /* run/scanners */
	int have_sc;
	long spid;
	int sup_alive;
	int conf_ok;
	long long conf_since;
	struct buf conf_err;
	int deliver; /* router.hold_expiry_action = "deliver" */
};

/* The queue depths: the spool's directories, every connector's outbox, and export/. */
static void st_queues_collect(const struct conf *c, struct spool *sp, struct st_report *r)
{
	struct dirstat *ds = r->ds;
	size_t nd = 0;
	static const enum spool_dir dirs[] = {SD_INBOUND,    SD_INCOMING, SD_SCAN,   SD_ROUTE,
	                                      SD_QUARANTINE, SD_HOLD,     SD_BADMAIL};
	for (size_t i = 0; i < ARRAY_LEN(dirs); i++) {
		snprintf(ds[nd].label, sizeof ds[nd].label, "%s", spool_dir_name(dirs[i]));
		qstat_dir(sp->fd[dirs[i]], dirs[i] != SD_INBOUND, &ds[nd].q);
		nd++;
	}
	for (size_t i = 0; i < c->n_connectors && nd < ARRAY_LEN(r->ds); i++) {
		int ofd = openat(sp->fd[SD_OUTBOX], c->connectors[i].name,
		                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		snprintf(ds[nd].label, sizeof ds[nd].label, "outbox/%s", c->connectors[i].name);
		qstat_dir(ofd, 1, &ds[nd].q);
		if (ofd >= 0)
			close(ofd);
		nd++;
	}
	/* The fleet's records waiting for the exporter (docs/FLEET.md); at fleet.max_backlog
	 * new records are dropped, and that needs the administrator. */
	r->export_full = 0;
	if (c->fleet.enabled && nd < ARRAY_LEN(r->ds)) {
		int xfd = export_dir_open(sp, 0);
		snprintf(ds[nd].label, sizeof ds[nd].label, "export");
		qstat_dir(xfd, 0, &ds[nd].q);
		if (xfd >= 0)
			close(xfd);
		r->export_full = ds[nd].q.count >= (size_t)c->fleet.max_backlog;
		nd++;
	}
	r->nd = nd;
}

/* The supervisor's status file and the scanners' health file; a pid is shown running only
 * if alive. */
static void st_supervisor_read(struct spool *sp, struct st_report *r)
{
	struct buf v;
	buf_init(&v);
	int have = read_file_at(sp->fd[SD_RUN], "status", &r->st, 1 << 20) == 0;
	r->spid = 0;
	if (have && kv_find(buf_cstr(&r->st), "pid", &v) == 0)
		r->spid = strtol(buf_cstr(&v), NULL, 10);
	r->sup_alive = have && r->spid > 0 && (kill((pid_t)r->spid, 0) == 0 || errno == EPERM);
	r->have_sc = read_file_at(sp->fd[SD_RUN], "scanners", &r->sc, 1 << 20) == 0;
	/* The config file spoold last tried to load: ok=0 when a reload rejected it, so that
	 * the file on disk is not the one in force. */
	r->conf_ok = 1;
	r->conf_since = 0;
	const char *cl = r->sup_alive ? strstr(buf_cstr(&r->st), "\nconfig ") : NULL;
	if (cl) {
		char one[8192];
		const char *e = strchr(cl + 1, '\n');
		size_t len = e ? (size_t)(e - cl - 1) : strlen(cl + 1);
		if (len < sizeof one) {
			memcpy(one, cl + 1, len);
			one[len] = '\0';
			if (kv_find(one, "ok", &v) == 0)
				r->conf_ok = strcmp(buf_cstr(&v), "0") != 0;
			if (kv_find(one, "since", &v) == 0)
				r->conf_since = strtoll(buf_cstr(&v), NULL, 10);
			kv_find(one, "error", &r->conf_err);
		}
	}
	buf_free(&v);
}

/* The JSON object up to the opening of "stages". */
static void st_head_json(const struct conf *c, const struct spool *sp, struct st_report *r)
{
	printf("{\"spool\":");
	st_json_str(sp->root);
	printf(",\"queues\":{");
	for (size_t i = 0; i < r->nd; i++) {
		printf("%s", i ? "," : "");
		st_json_str(r->ds[i].label);
		printf(":{\"count\":%zu,\"bytes\":%llu,\"oldest_age\":%lld}", r->ds[i].q.count,
		       r->ds[i].q.bytes, r->ds[i].q.oldest);
	}
	printf("},\"renames_journaled\":%s", sp->rename_journaled ? "true" : "false");
	printf(",\"hold_expiry_delivers_unscanned\":%s", r->deliver ? "true" : "false");
	if (c->fleet.enabled) {
		printf(",\"fleet\":{\"node\":");
		st_json_str(c->fleet.node);
		printf(",\"database\":%s,\"max_backlog\":%d,\"full\":%s}",
		       c->fleet.conninfo[0] ? "true" : "false", c->fleet.max_backlog,
		       r->export_full ? "true" : "false");
	}
	printf(",\"spoold\":{\"running\":%s,\"pid\":%ld},\"config\":{\"ok\":%s,"
	       "\"since\":%lld,\"error\":",
	       r->sup_alive ? "true" : "false", r->sup_alive ? r->spid : 0L,
	       r->conf_ok ? "true" : "false", r->conf_since);
	st_json_str(buf_cstr(&r->conf_err));
	printf("},\"stages\":[");
}

/* The text report up to the stages: warnings, the queues, the fleet, spoold, the config. */
static void st_head_text(const struct conf *c, const struct spool *sp, const struct st_report *r)
{
	if (r->deliver)
		printf("WARNING: router.hold_expiry_action = \"deliver\": held messages that "
		       "expire are DELIVERED UNSCANNED (with a warning header)\n\n");
	/* Whether the filesystem journals renames decides how many directory fsyncs a
	 * hand-off costs (docs/INTERNALS.md, "Durability"). */
	printf("spool %s\nfilesystem: %s\n\n%-22s %8s %12s %10s\n", sp->root,
	       sp->rename_journaled
	           ? "journals renames (one directory fsync per move)"
	           : "does not journal renames (both directories fsync'd per move)",
	       "queue", "count", "bytes", "oldest");
	for (size_t i = 0; i < r->nd; i++) {
		char age[32] = "-";
		if (r->ds[i].q.oldest >= 0)
			snprintf(age, sizeof age, "%llds", r->ds[i].q.oldest);
		printf("%-22s %8zu %12llu %10s\n", r->ds[i].label, r->ds[i].q.count,
		       r->ds[i].q.bytes, age);
	}
	if (c->fleet.enabled) {
		printf("\nfleet: node %s, %s; export/ holds at most %d records%s\n", c->fleet.node,
		       c->fleet.conninfo[0] ? "exporter ships to the database"
		                            : "no database: records wait in export/",
		       c->fleet.max_backlog,
		       r->export_full ? " - FULL: new records are DROPPED "
		                        "(spoold_export_dropped_total)"
		                      : "");
		st_fleet_state(sp->fd[SD_RUN], c);
	}
	printf("\nspoold: %s", r->sup_alive ? "running" : "not running");
	if (r->sup_alive)
		printf(" (pid %ld)", r->spid);
	printf("\n");
	if (!r->conf_ok) {
		struct buf e;
		buf_init(&e);
		text_escape(&e, r->conf_err.data, r->conf_err.len, 2048);
		printf("CONFIG REJECTED: the last reload (%lld s ago) refused %s; spoold "
		       "runs on "
		       "the config it loaded before: %s\n",
		       (long long)(time(NULL) - r->conf_since), c->path, buf_cstr(&e));
		buf_free(&e);
	}
}

/* One "stagedef" line of run/status, as text. */
static void st_stagedef_print(const char *line, struct buf *v)
{
	char name[64] = "?";
	long inst = 0, down = 0, paused = 0, restarts = 0;
	if (kv_find(line, "name", v) == 0)
		snprintf(name, sizeof name, "%s", buf_cstr(v));
	if (kv_find(line, "instances", v) == 0)
		inst = strtol(buf_cstr(v), NULL, 10);
	if (kv_find(line, "down", v) == 0)
		down = strtol(buf_cstr(v), NULL, 10);
	if (kv_find(line, "paused", v) == 0)
		paused = strtol(buf_cstr(v), NULL, 10);
	if (kv_find(line, "restarts", v) == 0)
		restarts = strtol(buf_cstr(v), NULL, 10);
	printf("%-16s instances %ld restarts %ld%s%s\n", name, inst, restarts,
	       down ? " STOPPED (spoolctl start to start)" : "",
	       paused ? " PAUSED (spoolctl resume to resume)" : "");
}

/* One "stage" line of run/status (one instance), as text or as a JSON object. */
static void st_stage_print(const char *line, int json, int first, struct buf *v)
{
	char name[64] = "?", state[32] = "?";
	long pid = 0, restarts = 0, started = 0, idx = 0, ready = 0, paused = 0;
	if (kv_find(line, "name", v) == 0)
		snprintf(name, sizeof name, "%s", buf_cstr(v));
	if (kv_find(line, "state", v) == 0)
		snprintf(state, sizeof state, "%s", buf_cstr(v));
	if (kv_find(line, "pid", v) == 0)
		pid = strtol(buf_cstr(v), NULL, 10);
	if (kv_find(line, "idx", v) == 0)
		idx = strtol(buf_cstr(v), NULL, 10);
	if (kv_find(line, "restarts", v) == 0)
		restarts = strtol(buf_cstr(v), NULL, 10);
	if (kv_find(line, "started", v) == 0)
		started = strtol(buf_cstr(v), NULL, 10);
	if (kv_find(line, "ready", v) == 0)
		ready = strtol(buf_cstr(v), NULL, 10);
	if (kv_find(line, "paused", v) == 0)
		paused = strtol(buf_cstr(v), NULL, 10);
	int running = strcmp(state, "running") == 0;
	long up = running && started ? (long)(time(NULL) - started) : 0;
	if (json)
		printf("%s{\"name\":\"%s\",\"instance\":%ld,\"pid\":%ld,"
		       "\"state\":\"%s\",\"ready\":%s,\"paused\":%s,\"uptime\":%ld,"
		       "\"restarts\":%ld}",
		       first ? "" : ",", name, idx, pid, state, ready && running ? "true" : "false",
		       paused ? "true" : "false", up, restarts);
	else
		printf("  %-16s #%ld %-8s %-8s pid %-8ld up %lds restarts %ld%s\n", name, idx,
		       state, running ? (ready ? "ready" : "starting") : "-", pid, up, restarts,
		       paused ? " paused" : "");
}

/* The stages from run/status (only while spoold is alive); the lines are cut in place. */
static void st_stages_print(struct st_report *r, int json)
{
	struct buf v;
	buf_init(&v);
	int first = 1;
	char *line = r->sup_alive ? r->st.data : NULL;
	while (line && *line) {
		char *nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = '\0';
		if (strncmp(line, "stagedef ", 9) == 0 && !json) {
			st_stagedef_print(line, &v);
		} else if (strncmp(line, "stage ", 6) == 0) {
			st_stage_print(line, json, first, &v);
			first = 0;
		}
		line = nl + 1;
	}
	buf_free(&v);
}

/* Every scanner's slots, health and pool. Returns 1 when one is neither ok nor unknown. */
static int st_scanners_print(const struct conf *c, struct spool *sp, struct st_report *r, int json)
{
	int degraded = 0;
	if (json)
		printf("],\"scanners\":[");
	else if (r->sup_alive)
		printf("\nscanners\n");
	else
		printf(
		    "\nscanners (as last recorded: with spoold not running this may be stale)\n");
	struct health h;
	buf_init(&h.reason);
	for (size_t i = 0; i < c->n_scanners; i++) {
		const struct conf_scanner *s = &c->scanners[i];
		int busy = slot_count_busy(sp, s->name, s->max_concurrent);
		st_health(r->have_sc ? buf_cstr(&r->sc) : NULL, s->name, &h);
		if (json) {
			printf("%s{\"name\":", i ? "," : "");
			st_json_str(s->name);
			printf(",\"slots_busy\":%d,\"slots_max\":%d,\"health\":", busy,
			       s->max_concurrent);
			st_json_str(h.state);
			printf(",\"since\":%lld,\"stale\":%s,\"reason\":", h.since,
			       r->sup_alive ? "false" : "true");
			st_json_str(buf_cstr(&h.reason));
			st_pool(s, sp->fd[SD_RUN], 1);
			printf("}");
		} else {
			struct buf e;
			buf_init(&e);
			escape_bytes(&e, s->name, strlen(s->name), 128);
			printf("  %-16s slots %d/%d health %s", buf_cstr(&e), busy,
			       s->max_concurrent, h.state);
			if (h.reason.len) {
				buf_reset(&e);
				text_escape(&e, h.reason.data, h.reason.len, 512);
				printf(" (%s)", buf_cstr(&e));
			}
			printf("\n");
			buf_free(&e);
			st_pool(s, sp->fd[SD_RUN], 0);
		}
		if (strcmp(h.state, "ok") != 0 && strcmp(h.state, "unknown") != 0)
			degraded = 1;
	}
	buf_free(&h.reason);
	return degraded;
}

int ctl_cmd_status(struct conf *c, int argc, char **argv)
{
	int json = argc > 0 && strcmp(argv[0], "--json") == 0;
	struct spool sp;
	ctl_spool_open(c, &sp);
	struct st_report r;
	st_queues_collect(c, &sp, &r);
	buf_init(&r.st);
	buf_init(&r.sc);
	buf_init(&r.conf_err);
	st_supervisor_read(&sp, &r);
	int degraded = !r.conf_ok || r.export_full;
	r.deliver = c->router.hold_expiry_action == HOLD_EXPIRY_DELIVER;

	if (json)
		st_head_json(c, &sp, &r);
	else
		st_head_text(c, &sp, &r);
	st_stages_print(&r, json);
	if (st_scanners_print(c, &sp, &r, json))
		degraded = 1;
	if (json)
		printf("]}\n");
	buf_free(&r.st);
	buf_free(&r.sc);
	buf_free(&r.conf_err);
	spool_close(&sp);
	/* Like systemctl status: 3 when the supervisor is not running, 1 when it runs but
	 * something needs the administrator (a rejected config, a scanner not ok). */
	return !r.sup_alive ? 3 : degraded ? 1 : 0;
}
