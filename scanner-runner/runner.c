/*
 * scanner-runner - runs the configured scanners over every part of a split message
 * (docs/INTERNALS.md, state S2 -> S3).
 *
 * Claims scan/<qid>/, runs every primary scanner over every NNNN.ATT (per-attachment:
 * one process per part, as MailEnable does; per-message: one process for all parts;
 * clamd: the descriptor is handed to clamd), runs the backup scanners only when a primary
 * failed, writes "verdicts" and commits to route/ with one rename. The router decides;
 * this stage only records. Anything unmapped is an error, never clean.
 *
 * Before the first message, every canary_interval seconds and when a scanner's version
 * changes, canary.c checks each scanner (EICAR infected with a name, a clean file clean,
 * a missing file an error); a degraded scanner's parts get an extra error line, so its
 * mail is held (run/scanners shows the health). Every verdict line also goes to the
 * message's trace, and to the metrics spoold_parts_scanned_total{scanner,verdict} and
 * spoold_scan_seconds{scanner}.
 *
 * DIAGNOSTICS
 *   Exit 75 when the spool is unusable, 78 on a config error. A scanner failure is a
 *   verdict (error), not an exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clamd.h"
#include "conf.h"
#include "crash.h"
#include "exec.h"
#include "farm.h"
#include "log.h"
#include "manifest.h"
#include "metrics.h"
#include "runner.h"
#include "slot.h"
#include "spool.h"
#include "stage.h"
#include "trace.h"
#include "util.h"
#include "verdict.h"

#define OUTPUT_EXCERPT 512

struct runner {
	struct runner_scanner *sc;
	size_t n;
};

static struct runner runner_g;

/* Substitute {file} / {dir} in one argv word. */
static char *runner_word_expand(const char *w, const char *file, const char *dir)
{
	struct buf b;
	buf_init(&b);
	while (*w) {
		if (strncmp(w, "{file}", 6) == 0 && file) {
			buf_addstr(&b, file);
			w += 6;
		} else if (strncmp(w, "{dir}", 5) == 0) {
			buf_addstr(&b, dir);
			w += 5;
		} else {
			buf_add(&b, w, 1);
			w++;
		}
	}
	buf_cstr(&b);
	return b.data;
}

/* Build the argv: every word expanded; a word that is exactly {files} becomes one word per
 * part. Paths come from the spool root and part indexes only, never from the message. */
char **runner_argv(const struct conf_scanner *sc, const char *dir, const char *file,
                   const struct manifest *m)
{
	size_t n = 0, cap = 8;
	char **v = xmalloc(cap * sizeof(char *));
	for (char **w = sc->argv; *w; w++) {
		if (strcmp(*w, "{files}") == 0 && m) {
			for (size_t i = 0; i < m->n_parts; i++) {
				char name[16];
				manifest_part_name(m->parts[i].index, name);
				if (n + 2 > cap)
					v = xrealloc(v, (cap *= 2) * sizeof(char *));
				v[n++] = xasprintf("%s/%s", dir, name);
			}
			continue;
		}
		if (strcmp(*w, "{files}") == 0 && file) {
			/* The canary: per-message scanners get their one test file. */
			if (n + 2 > cap)
				v = xrealloc(v, (cap *= 2) * sizeof(char *));
			v[n++] = xstrdup(file);
			continue;
		}
		if (n + 2 > cap)
			v = xrealloc(v, (cap *= 2) * sizeof(char *));
		v[n++] = runner_word_expand(*w, file, dir);
	}
	v[n] = NULL;
	return v;
}

void runner_argv_free(char **v)
{
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

void runner_argv_escape(char **v, struct buf *out)
{
	for (char **p = v; *p; p++) {
		if (p != v)
			buf_addstr(out, " ");
		buf_addstr(out, *p);
	}
}

static int runner_code_in(int code, const int *codes, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (codes[i] == code)
			return 1;
	return 0;
}

/* The virus name from the scanner's output, from the first line the regex matches. */
void runner_virus_name(const struct runner_scanner *rs, const char *out, const char *only,
                       char *name, size_t len)
{
	name[0] = '\0';
	if (!rs->has_rx || out == NULL)
		return;
	const char *line = out;
	while (*line) {
		const char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		char *l = xstrndup(line, ll);
		regmatch_t mt[3];
		if ((only == NULL || strstr(l, only)) && regexec(&rs->rx, l, 3, mt, 0) == 0) {
			int g = rs->rx.re_nsub >= 2 ? 2 : 1;
			if (mt[g].rm_so >= 0) {
				size_t vl = (size_t)(mt[g].rm_eo - mt[g].rm_so);
				if (vl >= len)
					vl = len - 1;
				memcpy(name, l + mt[g].rm_so, vl);
				name[vl] = '\0';
				free(l);
				return;
			}
		}
		free(l);
		if (!nl)
			break;
		line = nl + 1;
	}
}

static void runner_exec_opts(const struct conf_scanner *sc, const char *dir, int slot,
                             struct exec_opts *o)
{
	exec_opts_init(o);
	o->cwd = sc->workdir ? sc->workdir : dir;
	o->timeout_ms = sc->timeout * 1000;
	o->output_max = 64 * 1024;
	o->rlimit_as = sc->rlimit_as;
	o->rlimit_cpu = sc->rlimit_cpu;
	o->rlimit_nofile = sc->rlimit_nofile;
	o->keep_fd = slot;
}

/* Run one scanner process while holding one of its slots; the slot descriptor goes to
 * the child too, so the slot stays taken for as long as the child lives. */
void runner_exec_slotted(struct stage *st, const struct conf_scanner *sc, char **argv,
                         const char *dir, const char *qid, struct exec_result *res)
{
	struct exec_opts o;
	int slot = slot_acquire(&st->spool, sc->name, sc->max_concurrent);
	if (slot < 0)
		die_temp(qid, "cannot take a slot for scanner %s in %s/slots: %s", sc->name,
		         st->spool.root, strerror(errno));
	runner_exec_opts(sc, dir, slot, &o);
	if (exec_run(argv, &o, res) < 0)
		die_temp(qid, "cannot run scanner %s: %s", sc->name, strerror(errno));
	slot_release(slot);
}

/* Map an exec result for one part: clean and infected only when the exit code says so. */
enum verdict runner_map(const struct runner_scanner *rs, const struct exec_result *res)
{
	const struct conf_scanner *sc = rs->conf;
	if (res->timed_out || res->exec_failed || !res->exited)
		return V_ERROR;
	if (runner_code_in(res->exit_code, sc->clean_codes, sc->n_clean))
		return V_CLEAN;
	if (runner_code_in(res->exit_code, sc->infected_codes, sc->n_infected))
		return V_INFECTED;
	return V_ERROR;
}

/* Scan time per scanner run (one process, or one clamd request), for the histogram. */
static void runner_observe(const struct conf_scanner *sc, long ms)
{
	char esc[256], labels[300];
	metrics_label_escape(sc->name, esc, sizeof esc);
	snprintf(labels, sizeof labels, "scanner=\"%s\"", esc);
	metrics_observe("spoold_scan_seconds", labels, (double)ms / 1000.0);
}

static void runner_excerpt(const struct exec_result *res, char *out, size_t len)
{
	struct buf b;
	buf_init(&b);
	buf_add(&b, res->output.data ? res->output.data : "", res->output.len);
	size_t n = b.len < len - 1 ? b.len : len - 1;
	memcpy(out, b.data ? b.data : "", n);
	out[n] = '\0';
	buf_free(&b);
}

static void runner_scan_per_attachment(struct stage *st, struct runner_scanner *rs, const char *dir,
                                       const struct manifest *m, struct verdicts *vs,
                                       const char *qid, int backup)
{
	const struct conf_scanner *sc = rs->conf;
	for (size_t i = 0; i < m->n_parts; i++) {
		char name[16], exits[64], virus[256], excerpt[OUTPUT_EXCERPT];
		struct exec_result res;
		struct buf av;
		manifest_part_name(m->parts[i].index, name);
		char *file = xasprintf("%s/%s", dir, name);
		char **argv = runner_argv(sc, dir, file, NULL);
		runner_exec_slotted(st, sc, argv, dir, qid, &res);
		runner_observe(sc, res.ms);
		enum verdict v = runner_map(rs, &res);
		exec_result_describe(&res, exits, sizeof exits);
		virus[0] = '\0';
		if (v == V_INFECTED) {
			runner_virus_name(rs, buf_cstr(&res.output), NULL, virus, sizeof virus);
			if (!virus[0])
				snprintf(virus, sizeof virus, "unknown");
		}
		runner_excerpt(&res, excerpt, sizeof excerpt);
		buf_init(&av);
		runner_argv_escape(argv, &av);
		struct verdict_line *l =
		    verdicts_add(vs, (int)m->parts[i].index, sc->name, v, virus, exits, res.ms,
		                 rs->version, buf_cstr(&av), excerpt);
		l->backup = backup;
		if (v != V_CLEAN)
			log_info(qid, "scanner=%s part=%u verdict=%s virus=%s exit=%s ms=%ld",
			         sc->name, m->parts[i].index, verdict_name(v), virus, exits,
			         res.ms);
		buf_free(&av);
		exec_result_free(&res);
		runner_argv_free(argv);
		free(file);
	}
}

static void runner_scan_per_message(struct stage *st, struct runner_scanner *rs, const char *dir,
                                    const struct manifest *m, struct verdicts *vs, const char *qid,
                                    int backup)
{
	const struct conf_scanner *sc = rs->conf;
	char exits[64], excerpt[OUTPUT_EXCERPT];
	struct exec_result res;
	struct buf av;
	if (m->n_parts == 0)
		return;
	char **argv = runner_argv(sc, dir, NULL, m);
	runner_exec_slotted(st, sc, argv, dir, qid, &res);
	runner_observe(sc, res.ms);
	enum verdict v = runner_map(rs, &res);
	exec_result_describe(&res, exits, sizeof exits);
	runner_excerpt(&res, excerpt, sizeof excerpt);
	buf_init(&av);
	runner_argv_escape(argv, &av);
	/* Which parts are infected comes from the output lines naming them; an infected exit
	 * code with no part named cannot be attributed, so every part becomes an error. */
	size_t named = 0;
	char(*names)[256] = xcalloc(m->n_parts, sizeof *names);
	if (v == V_INFECTED) {
		for (size_t i = 0; i < m->n_parts; i++) {
			char pn[16], key[32];
			manifest_part_name(m->parts[i].index, pn);
			snprintf(key, sizeof key, "/%s:", pn);
			runner_virus_name(rs, buf_cstr(&res.output), key, names[i],
			                  sizeof names[i]);
			if (names[i][0])
				named++;
		}
	}
	for (size_t i = 0; i < m->n_parts; i++) {
		enum verdict pv = v;
		const char *virus = "";
		if (v == V_INFECTED) {
			if (named == 0)
				pv = V_ERROR;
			else if (names[i][0])
				virus = names[i];
			else
				pv = V_CLEAN;
		}
		struct verdict_line *l =
		    verdicts_add(vs, (int)m->parts[i].index, sc->name, pv, virus, exits, res.ms,
		                 rs->version, buf_cstr(&av), excerpt);
		l->backup = backup;
		if (pv != V_CLEAN)
			log_info(qid, "scanner=%s part=%u verdict=%s virus=%s exit=%s ms=%ld",
			         sc->name, m->parts[i].index, verdict_name(pv), virus, exits,
			         res.ms);
	}
	free(names);
	buf_free(&av);
	exec_result_free(&res);
	runner_argv_free(argv);
}

static void runner_scan_with(struct stage *st, struct runner_scanner *rs, struct spool_entry *e,
                             const char *dir, const struct manifest *m, struct verdicts *vs,
                             int backup)
{
	switch (rs->conf->mode) {
	case MODE_PER_ATTACHMENT:
		runner_scan_per_attachment(st, rs, dir, m, vs, e->qid, backup);
		break;
	case MODE_PER_MESSAGE:
		runner_scan_per_message(st, rs, dir, m, vs, e->qid, backup);
		break;
	case MODE_CLAMD:
		/* farm.c: pool placement, probes, the verdict cache, one session. */
		farm_scan_clamd(st, rs, e->fd, m, vs, e->qid, backup);
		break;
	}
	/* A degraded scanner still ran (its verdicts stay on record, and an infected one still
	 * quarantines), but whatever it said cannot be trusted as clean: one error line per
	 * part, from the same scanner, so that a backup can cover it as for any failed
	 * primary, and without one the message is held. */
	if (rs->degraded) {
		char why[600];
		snprintf(why, sizeof why, "scanner degraded: %s", rs->reason);
		for (size_t i = 0; i < m->n_parts; i++) {
			struct verdict_line *l =
			    verdicts_add(vs, (int)m->parts[i].index, rs->conf->name, V_ERROR, "",
			                 "degraded", 0, rs->version, "", why);
			l->backup = backup;
		}
		log_warn(e->qid, "scanner %s is degraded (%s); the message will be held",
		         rs->conf->name, rs->reason);
		trace_add(e->fd, e->qid, "canary scanner=%s state=degraded since=%lld",
		          rs->conf->name, (long long)rs->since);
	}
}

/* One trace line per verdict line, and the summary line, in one write; values escaped (a
 * virus name or an output excerpt is the scanner's text, not ours). Clean lines stay
 * short: the output is for failures. */
static void runner_trace_verdicts(struct spool_entry *e, const struct verdicts *vs, size_t bad)
{
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		buf_printf(&b, "scan part=%d", l->part);
		kv_addstr(&b, "scanner", l->scanner);
		kv_addstr(&b, "verdict", verdict_name(l->verdict));
		kv_addstr(&b, "virus", l->virus);
		kv_addstr(&b, "exit", l->exit);
		buf_printf(&b, " ms=%ld backup=%d", l->ms, l->backup);
		kv_addstr(&b, "version", l->version);
		/* A verdict from the cache (farm.c) says so in the record that travels. */
		if (strncmp(l->output, "cached=1 ", 9) == 0)
			buf_addstr(&b, " cached=1");
		if (l->verdict != V_CLEAN) {
			kv_addstr(&b, "argv", l->argv);
			kv_add(&b, "output", l->output,
			       strlen(l->output) > 200 ? 200 : strlen(l->output));
		}
		buf_add(&b, "\n", 1);
	}
	buf_printf(&b, "scanned results=%zu not_clean=%zu", vs->n, bad);
	trace_add_lines(e->fd, e->qid, buf_cstr(&b));
	buf_free(&b);
}

/* spoold_parts_scanned_total{scanner,verdict}: one per part and scanner. */
static void runner_count_verdicts(const struct verdicts *vs)
{
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		char esc[256], labels[400];
		if (l->part < 0)
			continue;
		metrics_label_escape(l->scanner, esc, sizeof esc);
		snprintf(labels, sizeof labels, "scanner=\"%s\",verdict=\"%s\"", esc,
		         verdict_name(l->verdict));
		metrics_inc("spoold_parts_scanned_total", labels, 1);
	}
}

/* Group commit: entries whose verdicts are written, waiting for one sync and their
 * renames into route/. Flushed when full, after every scan pass and every event (so a
 * lone message is not delayed), and before the stage stops. A crash before the flush
 * leaves them in scan/, where they are scanned again. */
#define RUNNER_BATCH 32
static struct spool_entry runner_batch[RUNNER_BATCH];
static size_t runner_nbatch;

static void runner_flush(struct stage *st)
{
	if (runner_nbatch == 0)
		return;
	/* One sync makes every verdicts file of the batch durable before any of them moves. */
	if (spool_entry_sync(&runner_batch[0]) < 0)
		die_temp(NULL, "cannot sync %s: %s", st->spool.root, strerror(errno));
	CRASH_POINT("scan-verdicts");
	/* The hand-offs: the router's sync makes these renames durable before it acts on the
	 * entries (spool_entry_handoff); a power cut before that leaves them in scan/. */
	for (size_t i = 0; i < runner_nbatch; i++)
		if (spool_entry_handoff(&runner_batch[i], SD_ROUTE) < 0)
			die_temp(runner_batch[i].qid, "cannot move %s/scan/%s to route/: %s",
			         st->spool.root, runner_batch[i].qid, strerror(errno));
	runner_nbatch = 0;
}

static int runner_handle(struct stage *st, const char *qid)
{
	struct spool_entry e;
	struct manifest m;
	struct verdicts vs;
	char reason[512];
	int r = spool_entry_claim(&st->spool, SD_SCAN, qid, &e);
	if (r <= 0) {
		if (r < 0)
			log_warn(qid, "cannot claim %s/scan/%s: %s", st->spool.root, qid,
			         strerror(errno));
		return r == 0 && errno == EWOULDBLOCK ? -1 : 0;
	}
	verdicts_init(&vs);
	char *dir = xasprintf("%s/scan/%s", st->spool.root, qid);
	if (manifest_read_at(e.fd, &m, reason, sizeof reason) < 0) {
		/* A committed entry always has a manifest; if it does not, fail closed. */
		log_warn(qid, "%s; the message will be held", reason);
		verdicts_add(&vs, -1, "scanner-runner", V_ERROR, "", "", 0, "", "", reason);
	} else {
		for (size_t i = 0; i < m.n_unscannable; i++)
			verdicts_add(&vs, -1, "splitter", V_UNSCANNABLE, "", "", 0, "", "",
			             m.unscannable[i]);
		int primary_failed = 0;
		for (size_t s = 0; s < runner_g.n && !stage_stopping(); s++) {
			if (runner_g.sc[s].conf->backup)
				continue;
			size_t before = vs.n;
			runner_scan_with(st, &runner_g.sc[s], &e, dir, &m, &vs, 0);
			for (size_t i = before; i < vs.n; i++)
				if (vs.lines[i].verdict == V_ERROR)
					primary_failed = 1;
		}
		/* Backups run only when a primary failed, as amavisd-new's do. */
		for (size_t s = 0; s < runner_g.n && primary_failed && !stage_stopping(); s++)
			if (runner_g.sc[s].conf->backup)
				runner_scan_with(st, &runner_g.sc[s], &e, dir, &m, &vs, 1);
		manifest_free(&m);
	}
	if (stage_stopping()) {
		/* Abandon safely: the entry stays in scan/ and is scanned again from scratch. */
		log_info(qid, "stop requested; scan abandoned, the message stays in scan/");
		goto out;
	}
	size_t bad = 0;
	for (size_t i = 0; i < vs.n; i++)
		if (vs.lines[i].verdict != V_CLEAN)
			bad++;
	runner_trace_verdicts(&e, &vs, bad);
	runner_count_verdicts(&vs);
	struct buf b;
	buf_init(&b);
	verdicts_format(&vs, &b);
	/* verdicts now; the sync and the move to route/ come in runner_flush, together with
	 * the other entries of this batch: route/ only ever sees complete, durable verdicts. */
	if (spool_entry_write(&e, "verdicts", b.data, b.len) < 0)
		die_temp(qid, "cannot write %s/verdicts: %s", dir, strerror(errno));
	buf_free(&b);
	log_info(qid, "scanned results=%zu not_clean=%zu", vs.n, bad);
	runner_batch[runner_nbatch++] = e; /* still claimed: the lock goes with the rename */
	e.fd = -1;
	if (runner_nbatch == RUNNER_BATCH)
		runner_flush(st);
out:
	verdicts_free(&vs);
	free(dir);
	spool_entry_release(&e);
	return 1;
}

/* The scanner's version line, for the verdict record and the canary's change check. */
void runner_version_fetch(const struct runner_scanner *rs, char *out, size_t len)
{
	const struct conf_scanner *sc = rs->conf;
	snprintf(out, len, "unknown");
	if (sc->type == SCANNER_CLAMD) {
		struct clamd_policy pol;
		clamd_policy_init(&pol, sc);
		if (clamd_version_any(sc->clamd_addrs, &pol, 5000, out, len) == 0)
			return;
		snprintf(out, len, "unknown");
		return;
	}
	if (sc->version_argv == NULL || sc->version_argv[0] == NULL)
		return;
	struct exec_opts o;
	struct exec_result res;
	exec_opts_init(&o);
	o.timeout_ms = 30000;
	o.output_max = 1024;
	if (exec_run(sc->version_argv, &o, &res) == 0 && res.exited && res.exit_code == 0 &&
	    res.output.len) {
		const char *txt = buf_cstr(&res.output);
		size_t l = strcspn(txt, "\n");
		if (l >= len)
			l = len - 1;
		memcpy(out, txt, l);
		out[l] = '\0';
	}
	exec_result_free(&res);
}

static void runner_recover(struct stage *st)
{
	runner_g.n = st->conf->n_scanners;
	runner_g.sc = xcalloc(runner_g.n, sizeof *runner_g.sc);
	for (size_t i = 0; i < runner_g.n; i++) {
		struct runner_scanner *rs = &runner_g.sc[i];
		rs->conf = &st->conf->scanners[i];
		if (rs->conf->virus_regex) {
			if (regcomp(&rs->rx, rs->conf->virus_regex, REG_EXTENDED | REG_NEWLINE) !=
			    0)
				die_perm(EXIT_CONFIG, "%s:%d: virus_regex does not compile",
				         st->conf->path, rs->conf->line);
			rs->has_rx = 1;
		}
	}
	for (size_t i = 0; i < runner_g.n; i++)
		runner_version_fetch(&runner_g.sc[i], runner_g.sc[i].version,
		                     sizeof runner_g.sc[i].version);
	/* The canary runs before the first message: mail is never scanned by a scanner
	 * whose health is unknown. */
	canary_start(st, runner_g.sc, runner_g.n);
	/* Nothing else to recover: an unlocked entry in scan/ is ordinary work, and a
	 * verdicts file left by a dead runner is overwritten by a fresh scan. */
}

static int runner_tick(struct stage *st)
{
	canary_tick(st, runner_g.sc, runner_g.n);
	return -1;
}

int main(int argc, char **argv)
{
	struct stage st = {
	    .name = "scanner-runner",
	    .watch_dir = SD_SCAN,
	    .recover = runner_recover,
	    .handle = runner_handle,
	    .flush = runner_flush,
	    .tick = runner_tick,
	    .tick_ms = 1000,
	};
	return stage_main(&st, argc, argv);
}
