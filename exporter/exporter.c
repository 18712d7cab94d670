/*
 * exporter - ships the fleet's event records from export/ to PostgreSQL and carries out
 * the release and delete actions queued for this node (docs/FLEET.md).
 *
 * Shipping: the oldest fleet.batch records go in one transaction, one multi-row
 * INSERT ... ON CONFLICT DO NOTHING into spoold.events (rows are unique on (node, qid,
 * seq), so a batch sent again after a crash adds nothing). A record is unlinked only
 * after COMMIT returned: a kill -9 between the two only sends it again. A record that
 * does not parse is renamed to .bad.<name> (kept, never shipped, logged).
 *
 * Actions: LISTEN spoold_actions, and a poll every fleet.poll seconds as the fallback.
 * A pending action of this node is marked running (committed) before it is carried out
 * by `spoolctl quarantine release|delete QID` (exec, no shell), then done or failed with
 * spoolctl's answer. spoolctl moves the entry out of quarantine/ once, so a second
 * release of the same message fails ("not in quarantine") instead of delivering again.
 * An action left running by a killed exporter is taken again at start: done when the
 * entry has left quarantine/ already, else carried out.
 *
 * The database being away never touches mail: the stages only write records; here the
 * connection is retried with a back-off of 1 s doubling to 30 s, and the records wait.
 *
 * Credentials: fleet.conninfo names a service or a passfile (conf.c refuses a password in
 * it); fleet.service_file becomes PGSERVICEFILE. Nothing secret is ever in argv.
 *
 * Exit: 78 for a config without a fleet database; 75 when the spool cannot be used.
 */
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "exec.h"
#include "export.h"
#include "log.h"
#include "metrics.h"
#include "spool.h"
#include "stage.h"
#include "user.h"
#include "util.h"
#include "version.h"

#define EXP_COLS       15
#define EXP_RECORD_MAX (256 * 1024) /* a record is a few hundred bytes; bigger is not ours */

static volatile sig_atomic_t exp_stop;

static void exp_on_signal(int sig)
{
	(void)sig;
	exp_stop = 1;
}

struct exporter {
	struct conf *conf;
	struct spool sp;
	int exportfd;
	PGconn *db;
	int backoff_ms;
	int64_t retry_at;    /* monotonic ms of the next connection attempt */
	int64_t next_poll;   /* monotonic ms of the next action poll */
	int64_t logged_down; /* when "database unavailable" was last logged */
	time_t state_since;  /* when the connection last came up or went down */
	long pending;        /* this node's pending actions at the last poll, -1 unknown */
	int64_t state_ms;    /* when run/fleet.state was last written */
	char spoolctl[PATH_MAX];
};

static void exp_db_drop(struct exporter *x, const char *why)
{
	int64_t now = now_ms_monotonic();
	if (x->logged_down == 0 || now - x->logged_down >= 60000) {
		log_warn(NULL,
		         "fleet database unavailable (%s); records wait in export/, retry in %d ms",
		         why, x->backoff_ms);
		x->logged_down = now;
	}
	if (x->db) {
		PQfinish(x->db);
		x->state_since = time(NULL);
		x->state_ms = 0;
	}
	x->db = NULL;
	x->pending = -1;
	x->retry_at = now + x->backoff_ms;
	x->backoff_ms = x->backoff_ms * 2 > 30000 ? 30000 : x->backoff_ms * 2;
	metrics_inc("spoold_export_db_errors_total", "", 1);
}

/* One statement without rows; 0, or -1 (the connection is dropped). */
static int exp_exec(struct exporter *x, const char *sql)
{
	PGresult *r = PQexec(x->db, sql);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	if (!ok) {
		char why[512];
		snprintf(why, sizeof why, "%s", PQerrorMessage(x->db));
		why[strcspn(why, "\n")] = '\0';
		exp_db_drop(x, why);
	}
	PQclear(r);
	return ok ? 0 : -1;
}

static int exp_connect(struct exporter *x)
{
	if (x->db)
		return 0;
	if (now_ms_monotonic() < x->retry_at)
		return -1;
	x->db = PQconnectdb(x->conf->fleet.conninfo);
	if (PQstatus(x->db) != CONNECTION_OK) {
		char why[512];
		snprintf(why, sizeof why, "%s", PQerrorMessage(x->db));
		why[strcspn(why, "\n")] = '\0';
		exp_db_drop(x, why);
		return -1;
	}
	if (exp_exec(x, "LISTEN spoold_actions") < 0)
		return -1;
	log_info(NULL, "connected to the fleet database as node %s", x->conf->fleet.node);
	x->state_since = time(NULL);
	x->state_ms = 0;
	x->backoff_ms = 1000;
	x->logged_down = 0;
	x->next_poll = 0; /* look for actions at once: some may have waited */
	return 0;
}

/* Values of one record as the INSERT's parameters (text; NULL where absent). */
static void exp_params(struct exporter *x, const struct export_record *r, char **v)
{
	v[0] = xstrdup(x->conf->fleet.node);
	v[1] = xstrdup(r->qid);
	v[2] = xasprintf("%lld", (long long)r->seq);
	v[3] = xstrdup(export_kind_state(r->kind));
	v[4] = xasprintf("%lld.%06lld", (long long)(r->time_us / 1000000),
	                 (long long)(r->time_us % 1000000));
	const char *s[] = {r->sender, r->rcpts, r->subject, r->message_id, r->from};
	for (int i = 0; i < 5; i++)
		v[5 + i] = s[i] ? xstrdup(s[i]) : NULL;
	v[10] = r->size >= 0 ? xasprintf("%lld", (long long)r->size) : NULL;
	v[11] = r->class ? xstrdup(r->class) : NULL;
	v[12] = r->viruses ? xstrdup(r->viruses) : NULL;
	v[13] = r->conn ? xstrdup(r->conn) : NULL;
	v[14] = r->detail ? xstrdup(r->detail) : NULL;
}

/* Read and parse the records named; a malformed one is set aside. Returns how many
 * parsed, their names in ok[]. */
static size_t exp_read(struct exporter *x, char **names, size_t n, char **ok, char **vals)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		struct buf b;
		struct export_record r;
		buf_init(&b);
		int rd = read_file_at(x->exportfd, names[i], &b, EXP_RECORD_MAX);
		if (rd < 0) {
			if (errno != ENOENT)
				log_warn(NULL, "cannot read export/%s: %s", names[i],
				         strerror(errno));
			buf_free(&b);
			continue;
		}
		if (export_record_parse(b.data ? b.data : "", b.len, &r) < 0) {
			char bad[300];
			snprintf(bad, sizeof bad, ".bad.%s", names[i]);
			log_error(NULL, "export/%s is not an event record: set aside as export/%s",
			          names[i], bad);
			if (renameat(x->exportfd, names[i], x->exportfd, bad) < 0)
				log_warn(NULL, "cannot rename export/%s: %s", names[i],
				         strerror(errno));
			metrics_inc("spoold_export_bad_total", "", 1);
			buf_free(&b);
			continue;
		}
		exp_params(x, &r, vals + k * EXP_COLS);
		ok[k++] = names[i];
		export_record_free(&r);
		buf_free(&b);
	}
	return k;
}

/* One batch. Returns how many records were shipped, -1 when the database failed. */
static int exp_ship(struct exporter *x)
{
	char **names;
	size_t n;
	if (spool_list(x->exportfd, 0, &names, &n) < 0) {
		log_warn(NULL, "cannot list export/: %s", strerror(errno));
		return 0;
	}
	size_t want = n < (size_t)x->conf->fleet.batch ? n : (size_t)x->conf->fleet.batch;
	char **ok = xcalloc(want ? want : 1, sizeof *ok);
	char **vals = xcalloc((want ? want : 1) * EXP_COLS, sizeof *vals);
	size_t k = exp_read(x, names, want, ok, vals);
	int shipped = 0;
	if (k > 0) {
		struct buf q;
		buf_init(&q);
		buf_addstr(&q,
		           "INSERT INTO spoold.events (node, qid, seq, kind, at, sender, rcpts, "
		           "subject, message_id, hdr_from, size, class, viruses, conn, detail) "
		           "VALUES ");
		for (size_t i = 0; i < k; i++) {
			int b = (int)(i * EXP_COLS);
			buf_printf(&q,
			           "%s($%d, $%d, $%d, $%d, to_timestamp($%d), $%d, "
			           "string_to_array($%d, E'\\n'), $%d, $%d, $%d, $%d, $%d, "
			           "string_to_array($%d, E'\\n'), $%d, $%d)",
			           i ? ", " : "", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7,
			           b + 8, b + 9, b + 10, b + 11, b + 12, b + 13, b + 14, b + 15);
		}
		buf_addstr(&q, " ON CONFLICT (node, qid, seq) DO NOTHING");
		shipped = -1;
		if (exp_exec(x, "BEGIN") == 0) {
			PGresult *r = PQexecParams(x->db, buf_cstr(&q), (int)(k * EXP_COLS), NULL,
			                           (const char *const *)vals, NULL, NULL, 0);
			int good = PQresultStatus(r) == PGRES_COMMAND_OK;
			if (!good) {
				log_error(NULL, "fleet: the database refused a batch: %s",
				          PQresultErrorMessage(r));
				exp_exec(x, "ROLLBACK");
			}
			PQclear(r);
			/* Only a committed batch is removed here: a crash before the unlinks
			 * sends these rows again, and ON CONFLICT keeps them once. */
			if (good && x->db && exp_exec(x, "COMMIT") == 0) {
				for (size_t i = 0; i < k; i++)
					if (unlinkat(x->exportfd, ok[i], 0) < 0 && errno != ENOENT)
						log_warn(NULL, "cannot remove export/%s: %s", ok[i],
						         strerror(errno));
				shipped = (int)k;
				metrics_inc("spoold_export_shipped_total", "", k);
			} else if (x->db) {
				exp_db_drop(x, "batch refused");
			}
		}
		buf_free(&q);
	}
	for (size_t i = 0; i < k * EXP_COLS; i++)
		free(vals[i]);
	free(vals);
	free(ok);
	spool_names_free(names, n);
	return shipped;
}

/* Carry out one action with spoolctl. Fills result; 1 done, 0 failed. */
static int exp_act(struct exporter *x, const char *action, const char *qid, char *result,
                   size_t rlen)
{
	char *argv[] = {x->spoolctl,    "-c",        x->conf->path, "quarantine",
	                (char *)action, (char *)qid, NULL};
	struct exec_opts o;
	struct exec_result res;
	exec_opts_init(&o);
	o.timeout_ms = 60000;
	o.output_max = 4096;
	if (exec_run(argv, &o, &res) < 0) {
		snprintf(result, rlen, "cannot run spoolctl: %s", strerror(errno));
		return 0;
	}
	struct buf t;
	buf_init(&t);
	text_escape(&t, res.output.data ? res.output.data : "", res.output.len, 1024);
	int ok = res.exited && res.exit_code == 0;
	char how[64];
	exec_result_describe(&res, how, sizeof how);
	/* spoolctl's own words are the reason: "<qid> released", "<qid> is not in
	 * quarantine". */
	if (ok)
		snprintf(result, rlen, "%s", buf_cstr(&t));
	else
		snprintf(result, rlen, "spoolctl exit %s: %s", how, buf_cstr(&t));
	buf_free(&t);
	exec_result_free(&res);
	return ok;
}

static void exp_action_finish(struct exporter *x, const char *id, int ok, const char *result)
{
	const char *p[] = {id, ok ? "done" : "failed", result};
	PGresult *r = PQexecParams(x->db,
	                           "UPDATE spoold.actions SET status = $2, result = $3, "
	                           "done_at = now() WHERE id = $1",
	                           3, NULL, p, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		log_error(NULL, "fleet: cannot record action %s as %s: %s", id, p[1],
		          PQresultErrorMessage(r));
	PQclear(r);
}

/* Take this node's pending actions (and, at start, those a killed exporter left running),
 * mark them running, carry them out. */
static void exp_actions(struct exporter *x, int leftovers)
{
	if (exp_exec(x, "BEGIN") < 0)
		return;
	const char *p[] = {x->conf->fleet.node, leftovers ? "running" : "pending"};
	PGresult *r = PQexecParams(x->db,
	                           "UPDATE spoold.actions SET status = 'running', "
	                           "started_at = now() WHERE id IN (SELECT id FROM spoold.actions "
	                           "WHERE node = $1 AND status = $2 ORDER BY id LIMIT 50 "
	                           "FOR UPDATE SKIP LOCKED) RETURNING id, action, qid",
	                           2, NULL, p, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error(NULL, "fleet: cannot take actions: %s", PQresultErrorMessage(r));
		PQclear(r);
		exp_exec(x, "ROLLBACK");
		return;
	}
	/* Running is committed before anything is done: a crash from here on leaves the
	 * action running, which the next start looks at instead of doing it blindly. */
	if (exp_exec(x, "COMMIT") < 0) {
		PQclear(r);
		return;
	}
	for (int i = 0; i < PQntuples(r) && x->db; i++) {
		const char *id = PQgetvalue(r, i, 0), *act = PQgetvalue(r, i, 1);
		const char *qid = PQgetvalue(r, i, 2);
		char result[1200];
		int ok;
		enum spool_dir where;
		char conn[80];
		if (!spool_qid_valid(qid)) {
			ok = 0;
			snprintf(result, sizeof result, "not a queue ID");
		} else if (leftovers &&
		           (spool_qid_locate(&x->sp, qid, &where, conn, sizeof conn) == 0 ||
		            where != SD_QUARANTINE)) {
			ok = 1;
			snprintf(result, sizeof result,
			         "carried out before a restart of the exporter: no longer in "
			         "quarantine");
		} else {
			ok = exp_act(x, act, qid, result, sizeof result);
		}
		log_audit(qid, "fleet action %s %s: %s%s%s", id, act, ok ? "done" : "failed",
		          result[0] ? ": " : "", result);
		exp_action_finish(x, id, ok, result);
		metrics_inc("spoold_fleet_actions_total",
		            ok ? "result=\"done\"" : "result=\"failed\"", 1);
	}
	PQclear(r);
}

/* This node's pending actions, for run/fleet.state. */
static void exp_count_pending(struct exporter *x)
{
	const char *p[] = {x->conf->fleet.node};
	PGresult *r = PQexecParams(x->db,
	                           "SELECT count(*) FROM spoold.actions WHERE node = $1 AND "
	                           "status IN ('pending', 'running')",
	                           1, NULL, p, NULL, NULL, 0);
	x->pending = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1
	                 ? strtol(PQgetvalue(r, 0, 0), NULL, 10)
	                 : -1;
	PQclear(r);
}

/* run/fleet.state, for spoolctl status and spoold's metrics: whether the database is
 * reachable, since when, and the actions waiting. Rewritten on a change and every 5 s. */
static void exp_state_write(struct exporter *x)
{
	int64_t now = now_ms_monotonic();
	if (x->state_ms && now - x->state_ms < 5000)
		return;
	x->state_ms = now;
	char line[160];
	int n = snprintf(line, sizeof line, "fleet connected=%d since=%lld pending_actions=%ld\n",
	                 x->db != NULL, (long long)x->state_since, x->pending);
	if (write_file_atomic(x->sp.fd[SD_RUN], "fleet.state", line, (size_t)n, 0640) < 0)
		log_warn(NULL, "cannot write %s/run/fleet.state: %s", x->sp.root, strerror(errno));
}

/* spoolctl: beside this program (a build tree), else PREFIX/bin from LIBEXECDIR. */
static void exp_find_spoolctl(struct exporter *x)
{
	char self[PATH_MAX];
	if (self_dir(self, sizeof self) == 0 &&
	    bsnprintf(x->spoolctl, sizeof x->spoolctl, "%s/spoolctl", self) == 0 &&
	    access(x->spoolctl, X_OK) == 0)
		return;
	snprintf(x->spoolctl, sizeof x->spoolctl, "%s/../../bin/spoolctl", LIBEXECDIR);
}

static void exp_wait(struct exporter *x, int ms)
{
	struct pollfd pf = {.fd = x->db ? PQsocket(x->db) : -1, .events = POLLIN};
	if (pf.fd < 0) {
		poll(NULL, 0, ms);
		return;
	}
	if (poll(&pf, 1, ms) > 0) {
		/* A server that went away makes the socket readable for good: drop the
		 * connection now rather than spin on it until the next statement fails. */
		if (!PQconsumeInput(x->db)) {
			char why[512];
			snprintf(why, sizeof why, "%s", PQerrorMessage(x->db));
			why[strcspn(why, "\n")] = '\0';
			exp_db_drop(x, why);
			return;
		}
		PGnotify *nt;
		while ((nt = PQnotifies(x->db)) != NULL) {
			if (strcmp(nt->extra, x->conf->fleet.node) == 0)
				x->next_poll = 0;
			PQfreemem(nt);
		}
	}
}

static void exp_loop(struct exporter *x, int once)
{
	int first = 1;
	while (!exp_stop) {
		int shipped = 0;
		if (exp_connect(x) == 0) {
			if (first) {
				exp_actions(x, 1);
				first = 0;
			}
			while (x->db && !exp_stop &&
			       (shipped = exp_ship(x)) >= x->conf->fleet.batch)
				;
			int64_t now = now_ms_monotonic();
			if (x->db && now >= x->next_poll) {
				exp_actions(x, 0);
				if (x->db)
					exp_count_pending(x);
				x->state_ms = 0;
				x->next_poll = now + (int64_t)x->conf->fleet.poll * 1000;
			}
		}
		exp_state_write(x);
		metrics_flush(&x->sp, "exporter");
		if (once)
			break;
		exp_wait(x, shipped > 0 ? 20 : 200);
	}
}

int main(int argc, char **argv)
{
	const char *conf_path = "/etc/spoold/spoold.conf";
	int once = 0;
	log_init("exporter");
	stage_ready_take();
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			conf_path = argv[++i];
		else if (strcmp(argv[i], "--once") == 0)
			once = 1;
		else if (strcmp(argv[i], "--version") == 0)
			version_print_exit("exporter");
		else
			die_perm(EXIT_USAGE, "usage: exporter [-c CONFIG] [--once]");
	}
	static struct exporter x;
	x.conf = conf_load(conf_path);
	user_root_check(x.conf, "exporter");
	if (!x.conf->fleet.enabled || x.conf->fleet.conninfo[0] == '\0')
		die_perm(EXIT_CONFIG,
		         "%s: no fleet database (fleet.conninfo): nothing to export to", conf_path);
	if (x.conf->fleet.service_file[0] &&
	    setenv("PGSERVICEFILE", x.conf->fleet.service_file, 1) < 0)
		die_temp(NULL, "cannot set PGSERVICEFILE: %s", strerror(errno));
	if (exec_sigchld_default() < 0)
		die_temp(NULL, "cannot reset SIGCHLD: %s", strerror(errno));
	struct sigaction sa = {.sa_handler = exp_on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	spool_open(&x.sp, x.conf->spool_dir, 0);
	x.exportfd = export_dir_open(&x.sp, 1);
	if (x.exportfd < 0)
		die_temp(NULL, "cannot open %s/export: %s", x.sp.root, strerror(errno));
	x.backoff_ms = 1000;
	x.pending = -1;
	x.state_since = time(NULL);
	exp_find_spoolctl(&x);
	stage_ready_notify();
	exp_loop(&x, once);
	if (x.db)
		PQfinish(x.db);
	metrics_flush(&x.sp, "exporter");
	close(x.exportfd);
	spool_close(&x.sp);
	conf_free(x.conf);
	return 0;
}
