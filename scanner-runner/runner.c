/*
 * scanner-runner - runs the configured scanners over every part of a split message
 * (docs/INTERNALS.md, state S2 -> S3).
 *
 * Claims scan/<qid>/, runs every primary scanner over every NNNN.ATT (per-attachment:
 * one process per part, as MailEnable does; per-message: one process for all parts;
 * clamd: the descriptor is handed to clamd), runs the backup scanners only when a primary
 * failed, writes "verdicts" and commits to route/ with one rename. The router decides;
 * this stage only records. Anything unmapped is an error, never clean: a failed waitpid,
 * output not read in full (cut at the bound, or held open after the child exited), a
 * part an infected per-message run did not name by its exact path (it is run again
 * without the named ones, and is clean only from a clean run), a scanner slot that did
 * not come free within slot_wait, and every part left when the message's scan budget
 * (max_message_scan_time, max_message_scan_runs) is spent.
 *
 * Messages are scanned side by side, round robin, a slice of a few runs each (struct
 * runner_job), so a message with many parts cannot hold up the others.
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
#include <sys/socket.h>
#include <unistd.h>

#include "broker.h"
#include "clamd.h"
#include "conf.h"
#include "crash.h"
#include "exec.h"
#include "farm.h"
#include "export.h"
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
/* Output kept per scanner run (per part; per-message runs get more, per part). */
#define RUNNER_OUTPUT_MAX (64 * 1024)

struct runner {
	struct runner_scanner *sc;
	size_t n;
};

static struct runner runner_g;
int runner_broker_fd = -1;

/* Word for file i of a run: its path, or through the broker its descriptor's name. */
static char *runner_file_word(size_t i, const char *path)
{
	char fdname[32];
	if (runner_broker_fd < 0)
		return xstrdup(path);
	broker_file_arg(i, fdname, sizeof fdname);
	return xstrdup(fdname);
}

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
			buf_addstr(&b, runner_broker_fd >= 0 ? "." : dir);
			w += 5;
		} else {
			buf_add(&b, w, 1);
			w++;
		}
	}
	buf_cstr(&b);
	return b.data;
}

char **runner_files(const char *dir, const char *file, const struct manifest *m, size_t *n)
{
	size_t k = m ? m->n_parts : file ? 1 : 0;
	char **v = xcalloc(k + 1, sizeof(char *));
	for (size_t i = 0; m && i < m->n_parts; i++) {
		char name[16];
		manifest_part_name(m->parts[i].index, name);
		v[i] = xasprintf("%s/%s", dir, name);
	}
	if (!m && file)
		v[0] = xstrdup(file);
	*n = k;
	return v;
}

/* Build the argv: every word expanded; a word that is exactly {files} becomes one word per
 * part. Paths come from the spool root and part indexes only, never from the message;
 * through the broker, from the file's position only (runner_file_word). */
char **runner_argv(const struct conf_scanner *sc, const char *dir, const char *file,
                   const struct manifest *m)
{
	size_t n = 0, cap = 8;
	char **v = xmalloc(cap * sizeof(char *));
	char *file_word = file ? runner_file_word(0, file) : NULL;
	for (char **w = sc->argv; *w; w++) {
		if (strcmp(*w, "{files}") == 0 && m) {
			for (size_t i = 0; i < m->n_parts; i++) {
				char name[16];
				manifest_part_name(m->parts[i].index, name);
				if (n + 2 > cap)
					v = xrealloc(v, (cap *= 2) * sizeof(char *));
				char *path = xasprintf("%s/%s", dir, name);
				v[n++] = runner_file_word(i, path);
				free(path);
			}
			continue;
		}
		if (strcmp(*w, "{files}") == 0 && file) {
			/* The canary: per-message scanners get their one test file. */
			if (n + 2 > cap)
				v = xrealloc(v, (cap *= 2) * sizeof(char *));
			v[n++] = xstrdup(file_word);
			continue;
		}
		if (n + 2 > cap)
			v = xrealloc(v, (cap *= 2) * sizeof(char *));
		v[n++] = runner_word_expand(*w, file_word, dir);
	}
	v[n] = NULL;
	free(file_word);
	return v;
}

void runner_argv_free(char **v)
{
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

/* The argv word of each part of sub, in order (as runner_argv makes them for {files}). */
static char **runner_argv_files_words(const char *dir, const struct manifest *sub)
{
	size_t n;
	char **v = runner_files(dir, NULL, sub, &n);
	for (size_t k = 0; k < n; k++) {
		char *w = runner_file_word(k, v[k]);
		free(v[k]);
		v[k] = w;
	}
	return v;
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

static void runner_exec_opts(const struct conf_scanner *sc, const char *dir, size_t output_max,
                             char **files, struct exec_opts *o)
{
	exec_opts_init(o);
	o->cwd = sc->workdir ? sc->workdir : dir;
	if (runner_broker_fd >= 0) {
		/* Through the broker: the files go as descriptors, and the scanner's cwd is
		 * its own private directory unless workdir names one. */
		o->broker_fd = runner_broker_fd;
		o->cwd = sc->workdir;
		o->files = (const char *const *)files;
		for (o->n_files = 0; files && files[o->n_files]; o->n_files++)
			;
	}
	o->timeout_ms = sc->timeout * 1000;
	o->output_max = output_max;
	o->rlimit_as = sc->rlimit_as;
	o->rlimit_cpu = sc->rlimit_cpu;
	o->rlimit_nofile = sc->rlimit_nofile;
	/* keep_fd stays -1: the slot is the runner's, never the child's (slot.h). */
}

/* Run one scanner process while holding one of its slots. The slot descriptor is
 * close-on-exec and handed to nobody: a grandchild that leaves the process group cannot
 * keep it. It is released only once exec_run has reaped the child and killed its group,
 * so the slots still bound the scanners running at once; if the runner dies, the child
 * dies with it (PR_SET_PDEATHSIG) and the kernel drops the lock. No free slot within
 * scanner_runner.slot_wait: res says not-started, which runner_map makes an error. */
static void runner_exec_slotted_max(struct stage *st, const struct conf_scanner *sc, char **argv,
                                    char **files, const char *dir, const char *qid,
                                    size_t output_max, struct exec_result *res)
{
	struct exec_opts o;
	int wait_s = st->conf->runner.slot_wait;
	int slot = slot_acquire_timed(&st->spool, sc->name, sc->max_concurrent, wait_s * 1000);
	if (slot < 0) {
		if (errno != ETIMEDOUT)
			die_temp(qid, "cannot take a slot for scanner %s in %s/slots: %s", sc->name,
			         st->spool.root, strerror(errno));
		memset(res, 0, sizeof *res);
		buf_init(&res->output);
		res->not_started = 1;
		buf_printf(&res->output, "no slot of scanner %s came free within slot_wait = %d s",
		           sc->name, wait_s);
		log_warn(qid, "no slot of scanner %s came free in %s/slots within %d s: %s",
		         sc->name, st->spool.root, wait_s, strerror(ETIMEDOUT));
		return;
	}
	runner_exec_opts(sc, dir, output_max, files, &o);
	if (exec_run(argv, &o, res) < 0)
		die_temp(qid, "cannot run scanner %s: %s", sc->name, strerror(errno));
	slot_release(slot);
}

void runner_exec_slotted(struct stage *st, const struct conf_scanner *sc, char **argv, char **files,
                         const char *dir, const char *qid, struct exec_result *res)
{
	runner_exec_slotted_max(st, sc, argv, files, dir, qid, RUNNER_OUTPUT_MAX, res);
}

/* Map an exec result for one part: clean and infected only when the exit code says so,
 * the child was reaped with a status and its output was read in full. */
enum verdict runner_map(const struct runner_scanner *rs, const struct exec_result *res)
{
	const struct conf_scanner *sc = rs->conf;
	if (res->timed_out || res->exec_failed || res->wait_failed || res->not_started ||
	    !res->exited)
		return V_ERROR;
	/* Output we did not read in full may hold the line that names a virus: whatever the
	 * exit code says, this answer is incomplete. */
	if (res->output_truncated)
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
	if (res->output_truncated)
		buf_printf(&b, "output truncated (over %zu bytes, or held open after exit): ",
		           res->output.len);
	buf_add(&b, res->output.data ? res->output.data : "", res->output.len);
	size_t n = b.len < len - 1 ? b.len : len - 1;
	memcpy(out, b.data ? b.data : "", n);
	out[n] = '\0';
	buf_free(&b);
}

/* One message being scanned. The runner keeps up to RUNNER_ACTIVE_MAX of them claimed
 * and gives each, in turn, a slice of at most RUNNER_SLICE_RUNS scanner runs or
 * RUNNER_SLICE_MS, whichever ends first (round robin). Why slices and not one message
 * at a time: a message with 999 parts in per-attachment mode is 999 processes, and would
 * hold the only runner for as long as they take; with slices, mail that arrives
 * meanwhile is pulled in between two slices and scanned alongside, so a one-part message
 * waits for at most one slice per message ahead of it, not for the big one to finish.
 * Why not interleave single parts of every message: a slice of several runs keeps the
 * cost of looking for new mail (one listing of scan/) small against the runs. */
struct runner_job {
	struct spool_entry e;
	char *dir;
	struct manifest m;
	int have_m;
	struct verdicts vs;
	size_t s;            /* the scanner (index into runner_g.sc) now or next */
	int backups;         /* 0: the primaries' turn; 1: the backups' (a primary failed) */
	int primary_failed;  /* a primary's pass added an error line */
	int in_pass;         /* scanner s has started on this message */
	size_t pass_first;   /* vs.n when scanner s started */
	size_t part;         /* per-attachment: the next part index into m.parts */
	unsigned char *todo; /* per-message: parts with no verdict from scanner s yet */
	int rounds;          /* per-message: runs of scanner s so far */
	int degraded_seen;   /* scanner s was degraded at some point of its pass */
	int64_t used_ms;     /* time spent scanning this message (its own runs only) */
	long used_runs;      /* scanner runs for this message */
	int done;
	/* Where the parts are scanned from: the work directory, or (separated spool) this
	 * runner's private copies of them (runner_job_copy). */
	int part_fd;
	char *copy_name; /* the copies' directory in runner_priv_fd, or NULL */
};

/* A separated spool: the parts belong to the splitter's user, who could change them while
 * they are scanned (a compromised parser showing the scanner one thing and the router
 * another). The runner scans copies of its own instead, in a directory only it can
 * enter, and hashes each as it copies: the scanners see exactly the bytes hashed, the
 * verdict cache is keyed by them, and the router delivers the message only if it still
 * has the hash of the raw part scanned (verdicts: message sha256=). -1: not separated. */
static int runner_priv_fd = -1;
static char *runner_priv_path;

enum {
	RUNNER_ACTIVE_MAX = 64,
	/* Claimed per round at most: another runner instance takes the rest of a backlog. */
	RUNNER_PULL_MAX = 8,
	RUNNER_SLICE_RUNS = 8,
	RUNNER_SLICE_MS = 2000,
	/* per-message: an infected run names its infected parts; the others are scanned
	 * again, without those, until a run exits clean or errs. Each run must name a new
	 * part, and there are at most this many. */
	RUNNER_PM_ROUNDS = 8,
	RUNNER_ARGV_RECORD = 1024, /* bytes of a per-message argv kept in each verdict line */
};

static struct runner_job *runner_active[RUNNER_ACTIVE_MAX];
static size_t runner_nactive;

static void runner_line_log(const char *qid, const struct verdict_line *l)
{
	if (l->verdict != V_CLEAN)
		log_info(qid, "scanner=%s part=%d verdict=%s virus=%s exit=%s ms=%ld", l->scanner,
		         l->part, verdict_name(l->verdict), l->virus, l->exit, l->ms);
}

/* One part, one process (per-attachment mode). */
static void runner_scan_part(struct stage *st, struct runner_scanner *rs, struct runner_job *j,
                             size_t i)
{
	const struct conf_scanner *sc = rs->conf;
	char name[16], exits[64], virus[256], excerpt[OUTPUT_EXCERPT];
	struct exec_result res;
	struct buf av;
	manifest_part_name(j->m.parts[i].index, name);
	char *file = xasprintf("%s/%s", j->dir, name);
	char **argv = runner_argv(sc, j->dir, file, NULL);
	size_t nf;
	char **files = runner_files(j->dir, file, NULL, &nf);
	runner_exec_slotted(st, sc, argv, files, j->dir, j->e.qid, &res);
	runner_argv_free(files);
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
	struct verdict_line *l = verdicts_add(&j->vs, (int)j->m.parts[i].index, sc->name, v, virus,
	                                      exits, res.ms, rs->version, buf_cstr(&av), excerpt);
	l->backup = j->backups;
	runner_line_log(j->e.qid, l);
	buf_free(&av);
	exec_result_free(&res);
	runner_argv_free(argv);
	free(file);
}

/* Which parts an infected per-message run named. A line names a part only when it starts
 * with exactly the word we passed for it (dir "/" NNNN.ATT, or through the broker
 * "/dev/fd/N") and a ':' right after: no prefix, substring or basename match, so
 * "<dir>/0001.ATT.x:", "/elsewhere/0001.ATT:", "0001.ATT:" or "/dev/fd/30:" for
 * "/dev/fd/3" name nothing. The virus name comes from that same line (virus_regex).
 * sub: the parts this run was given, in argv order (the parts in todo). Fills names[i]
 * for the parts in todo; returns how many it named. */
static size_t runner_attribute(const struct runner_scanner *rs, const char *out,
                               const struct runner_job *j, const struct manifest *sub,
                               char (*names)[256])
{
	size_t named = 0;
	char **words = runner_argv_files_words(j->dir, sub);
	const char *line = out;
	while (*line) {
		const char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		for (size_t k = 0, i = 0; k < sub->n_parts; k++) {
			size_t wl = strlen(words[k]);
			if (ll <= wl || memcmp(line, words[k], wl) != 0 || line[wl] != ':')
				continue;
			while (i < j->m.n_parts && j->m.parts[i].index != sub->parts[k].index)
				i++;
			if (i == j->m.n_parts || !j->todo[i] || names[i][0])
				break;
			char *l = xstrndup(line, ll);
			runner_virus_name(rs, l, NULL, names[i], sizeof names[i]);
			free(l);
			if (names[i][0])
				named++;
			break;
		}
		if (!nl)
			break;
		line = nl + 1;
	}
	runner_argv_free(words);
	return named;
}

/* One process for the parts of the message still in todo (per-message mode). Clean only
 * comes from a clean exit over exactly those parts; an infected exit makes the parts it
 * names infected, and the others are run again on their own (next round), because "not
 * named" is not "clean": the line naming them may be lost, cut or garbled. A round that
 * names none of them, or the last round, makes them errors. Returns 1 when every part
 * has its verdict from this scanner. */
static int runner_scan_per_message(struct stage *st, struct runner_scanner *rs,
                                   struct runner_job *j)
{
	const struct conf_scanner *sc = rs->conf;
	const struct manifest *m = &j->m;
	char exits[64], excerpt[OUTPUT_EXCERPT];
	struct exec_result res;
	struct buf av;
	struct manifest sub = {0};
	sub.parts = xcalloc(m->n_parts, sizeof *sub.parts);
	for (size_t i = 0; i < m->n_parts; i++)
		if (j->todo[i])
			sub.parts[sub.n_parts++] = m->parts[i];
	char **argv = runner_argv(sc, j->dir, NULL, &sub);
	size_t nf;
	char **files = runner_files(j->dir, NULL, &sub, &nf);
	/* One line per part is the usual answer: room for that, with the bound coming from
	 * the splitter's max_parts (config), not from the message. */
	size_t out_max = RUNNER_OUTPUT_MAX + sub.n_parts * (strlen(j->dir) + 16 + 256);
	runner_exec_slotted_max(st, sc, argv, files, j->dir, j->e.qid, out_max, &res);
	runner_observe(sc, res.ms);
	enum verdict v = runner_map(rs, &res);
	exec_result_describe(&res, exits, sizeof exits);
	runner_excerpt(&res, excerpt, sizeof excerpt);
	buf_init(&av);
	runner_argv_escape(argv, &av);
	if (av.len > RUNNER_ARGV_RECORD) {
		av.len = RUNNER_ARGV_RECORD;
		buf_printf(&av, " ... (%zu files)", sub.n_parts);
	}
	j->rounds++;
	size_t named = 0;
	char(*names)[256] = xcalloc(m->n_parts, sizeof *names);
	if (v == V_INFECTED)
		named = runner_attribute(rs, buf_cstr(&res.output), j, &sub, names);
	int again =
	    v == V_INFECTED && named > 0 && named < sub.n_parts && j->rounds < RUNNER_PM_ROUNDS;
	size_t left = 0;
	for (size_t i = 0; i < m->n_parts; i++) {
		enum verdict pv = v;
		const char *virus = "", *why = excerpt;
		if (!j->todo[i])
			continue;
		if (v == V_INFECTED) {
			if (names[i][0]) {
				virus = names[i];
			} else if (again) {
				left++;
				continue; /* scanned again, without the parts named this round */
			} else {
				pv = V_ERROR;
				why = named
				          ? "an infected run did not name this part, nor did the "
				            "last run"
				          : "an infected run named none of the parts it was given";
			}
		}
		j->todo[i] = 0;
		struct verdict_line *l =
		    verdicts_add(&j->vs, (int)m->parts[i].index, sc->name, pv, virus, exits, res.ms,
		                 rs->version, buf_cstr(&av), why);
		l->backup = j->backups;
		runner_line_log(j->e.qid, l);
	}
	free(names);
	free(sub.parts);
	runner_argv_free(files);
	buf_free(&av);
	exec_result_free(&res);
	runner_argv_free(argv);
	return left == 0;
}

/* farm.c: pool placement, probes, the verdict cache, one slot and one clamd session for
 * all of the message's parts. */
static void runner_scan_clamd(struct stage *st, struct runner_scanner *rs, struct runner_job *j)
{
	farm_scan_clamd(st, rs, j->part_fd, &j->m, &j->vs, j->e.qid, j->backups);
}

/* Move j->s to the next scanner whose turn it is (from j->s on): the primaries, then the
 * backups only if a primary failed, as amavisd-new's do. 0 when none is left. */
static int runner_job_seek(struct runner_job *j)
{
	for (;;) {
		while (j->s < runner_g.n && !!runner_g.sc[j->s].conf->backup != j->backups)
			j->s++;
		if (j->s < runner_g.n)
			return 1;
		if (j->backups || !j->primary_failed)
			return 0;
		j->backups = 1;
		j->s = 0;
	}
}

/* Scanner s has a verdict for every part: add the degraded lines, note a failure. */
static void runner_job_pass_end(struct runner_job *j)
{
	struct runner_scanner *rs = &runner_g.sc[j->s];
	/* A degraded scanner still ran (its verdicts stay on record, and an infected one still
	 * quarantines), but whatever it said cannot be trusted as clean: one error line per
	 * part, from the same scanner, so that a backup can cover it as for any failed
	 * primary, and without one the message is held. */
	if (j->degraded_seen) {
		char why[600];
		snprintf(why, sizeof why, "scanner degraded: %s", rs->reason);
		for (size_t i = 0; i < j->m.n_parts; i++) {
			struct verdict_line *l =
			    verdicts_add(&j->vs, (int)j->m.parts[i].index, rs->conf->name, V_ERROR,
			                 "", "degraded", 0, rs->version, "", why);
			l->backup = j->backups;
		}
		log_warn(j->e.qid, "scanner %s is degraded (%s); the message will be held",
		         rs->conf->name, rs->reason);
		trace_add(j->e.fd, j->e.qid, "canary scanner=%s state=degraded since=%lld",
		          rs->conf->name, (long long)rs->since);
	}
	for (size_t i = j->pass_first; i < j->vs.n && !j->backups; i++)
		if (j->vs.lines[i].verdict == V_ERROR)
			j->primary_failed = 1;
	j->in_pass = 0;
	j->s++;
}

static int runner_job_over_budget(const struct stage *st, const struct runner_job *j)
{
	const struct conf_runner *rc = &st->conf->runner;
	return (rc->max_message_scan_time > 0 &&
	        j->used_ms >= (int64_t)rc->max_message_scan_time * 1000) ||
	       (rc->max_message_scan_runs > 0 && j->used_runs >= rc->max_message_scan_runs);
}

/* Over budget: every part that still lacks a verdict from a scanner of this turn gets an
 * error line saying so (the router holds the message), and the scan ends here. No backup
 * runs after it: the budget is for the message, whichever scanner spends it. */
static void runner_job_budget_fail(const struct stage *st, struct runner_job *j)
{
	const struct conf_runner *rc = &st->conf->runner;
	char why[300];
	size_t n = 0;
	snprintf(why, sizeof why,
	         "scan budget exceeded (%lld ms and %ld runs used; max_message_scan_time = %d s, "
	         "max_message_scan_runs = %d): part not scanned",
	         (long long)j->used_ms, j->used_runs, rc->max_message_scan_time,
	         rc->max_message_scan_runs);
	for (size_t s = j->s; s < runner_g.n; s++) {
		const struct runner_scanner *rs = &runner_g.sc[s];
		if (!!rs->conf->backup != j->backups)
			continue;
		for (size_t i = 0; i < j->m.n_parts; i++) {
			if (s == j->s && j->in_pass) {
				if (rs->conf->mode == MODE_PER_ATTACHMENT && i < j->part)
					continue;
				if (rs->conf->mode == MODE_PER_MESSAGE && !j->todo[i])
					continue;
			}
			struct verdict_line *l =
			    verdicts_add(&j->vs, (int)j->m.parts[i].index, rs->conf->name, V_ERROR,
			                 "", "budget", 0, rs->version, "", why);
			l->backup = j->backups;
			n++;
		}
	}
	log_warn(j->e.qid, "%s (%zu part scans left undone); the message will be held", why, n);
	trace_add(j->e.fd, j->e.qid, "scan-budget exceeded ms=%lld runs=%ld undone=%zu",
	          (long long)j->used_ms, j->used_runs, n);
	j->done = 1;
}

/* One unit of work for j: one scanner run (one part, one per-message round, or one clamd
 * session), or the step to the next scanner. Sets j->done when the scan is complete. */
static void runner_job_step(struct stage *st, struct runner_job *j)
{
	if (!j->in_pass && !runner_job_seek(j)) {
		j->done = 1;
		return;
	}
	if (runner_job_over_budget(st, j)) {
		runner_job_budget_fail(st, j);
		return;
	}
	struct runner_scanner *rs = &runner_g.sc[j->s];
	if (!j->in_pass) {
		j->in_pass = 1;
		j->pass_first = j->vs.n;
		j->part = 0;
		j->rounds = 0;
		j->degraded_seen = 0;
		memset(j->todo, 1, j->m.n_parts);
	}
	j->degraded_seen |= rs->degraded;
	if (j->m.n_parts == 0) {
		runner_job_pass_end(j);
		return;
	}
	int64_t t0 = now_ms_monotonic();
	int finished = 1;
	switch (rs->conf->mode) {
	case MODE_PER_ATTACHMENT:
		runner_scan_part(st, rs, j, j->part++);
		finished = j->part >= j->m.n_parts;
		break;
	case MODE_PER_MESSAGE:
		finished = runner_scan_per_message(st, rs, j);
		break;
	case MODE_CLAMD:
		runner_scan_clamd(st, rs, j);
		break;
	}
	j->used_ms += now_ms_monotonic() - t0;
	j->used_runs++;
	j->degraded_seen |= rs->degraded;
	if (finished)
		runner_job_pass_end(j);
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

/* Remove j's private copies (before the batch's sync: they never need to reach the disk). */
static void runner_job_uncopy(struct runner_job *j)
{
	if (j->copy_name == NULL)
		return;
	if (j->part_fd >= 0 && j->part_fd != j->e.fd)
		close(j->part_fd);
	j->part_fd = j->e.fd;
	if (remove_tree_at(runner_priv_fd, j->copy_name) < 0 && errno != ENOENT)
		log_warn(j->e.qid, "cannot remove %s/%s: %s", runner_priv_path, j->copy_name,
		         strerror(errno));
	free(j->copy_name);
	j->copy_name = NULL;
}

/* Copy every part of j into a fresh directory of runner_priv_fd, hashing each as it is
 * copied; the raw part's hash is the message's. -1 with reason when a part cannot be
 * copied: the message is then held (an error verdict), never scanned from the original. */
static int runner_job_copy(struct runner_job *j, char *reason, size_t rlen)
{
	j->copy_name = xstrdup(j->e.qid);
	if (remove_tree_at(runner_priv_fd, j->copy_name) < 0 && errno != ENOENT)
		goto fail;
	if (mkdirat(runner_priv_fd, j->copy_name, 0700) < 0)
		goto fail;
	int dfd =
	    openat(runner_priv_fd, j->copy_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd < 0)
		goto fail;
	j->part_fd = dfd;
	for (size_t i = 0; i < j->m.n_parts; i++) {
		const struct manifest_part *mp = &j->m.parts[i];
		char name[32], hex[65];
		snprintf(name, sizeof name, "%04u.ATT", mp->index);
		int src = openat(j->e.fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
		struct stat st;
		if (src >= 0 && (fstat(src, &st) < 0 || !S_ISREG(st.st_mode))) {
			close(src);
			src = -1;
			errno = EINVAL;
		}
		if (src < 0) {
			snprintf(reason, rlen, "cannot open part %s: %s", name, strerror(errno));
			return -1;
		}
		int dst =
		    openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		int r = dst >= 0 ? copy_fd_sha256(src, dst, hex) : -1;
		int err = errno;
		close(src);
		if (dst >= 0 && close(dst) < 0 && r == 0) {
			r = -1;
			err = errno;
		}
		if (r < 0) {
			snprintf(reason, rlen, "cannot copy part %s for scanning: %s", name,
			         strerror(err));
			return -1;
		}
		if (mp->found == FOUND_RAW) {
			free(j->vs.msg_sha256);
			j->vs.msg_sha256 = xstrdup(hex);
		}
	}
	free(j->dir);
	j->dir = xasprintf("%s/%s", runner_priv_path, j->copy_name);
	return 0;
fail:
	snprintf(reason, rlen, "cannot make %s/%s for scanning: %s", runner_priv_path, j->e.qid,
	         strerror(errno));
	return -1;
}

static void runner_job_free(struct runner_job *j)
{
	verdicts_free(&j->vs);
	if (j->have_m)
		manifest_free(&j->m);
	free(j->todo);
	free(j->dir);
	runner_job_uncopy(j);
	spool_entry_release(&j->e);
	free(j);
}

/* Claim scan/<qid> and read its manifest. 1: a new job; 0: nothing to do (gone, or
 * already ours); -1: locked by someone else (look again shortly). */
static int runner_job_start(struct stage *st, const char *qid, struct runner_job **out)
{
	char reason[512];
	*out = NULL;
	for (size_t k = 0; k < runner_nactive; k++)
		if (strcmp(runner_active[k]->e.qid, qid) == 0)
			return 0;
	for (size_t k = 0; k < runner_nbatch; k++)
		if (strcmp(runner_batch[k].qid, qid) == 0)
			return 0; /* scanned, waiting for the group commit */
	struct runner_job *j = xcalloc(1, sizeof *j);
	int r = spool_entry_claim(&st->spool, SD_SCAN, qid, &j->e);
	if (r <= 0) {
		int e = errno;
		if (r < 0)
			log_warn(qid, "cannot claim %s/scan/%s: %s", st->spool.root, qid,
			         strerror(e));
		free(j);
		return r == 0 && e == EWOULDBLOCK ? -1 : 0;
	}
	verdicts_init(&j->vs);
	j->part_fd = j->e.fd;
	j->dir = xasprintf("%s/scan/%s", st->spool.root, qid);
	/* Only the splitter's manifest decides what is scanned (trust by ownership): one
	 * another stage's user wrote is not a manifest, and the message is held. */
	if (manifest_read_owned_at(j->e.fd, &j->m, conf_role_uid(st->conf, ROLE_SPLITTER), reason,
	                           sizeof reason) < 0) {
		/* A committed entry always has a manifest; if it does not, fail closed. */
		log_warn(qid, "%s; the message will be held", reason);
		verdicts_add(&j->vs, -1, "scanner-runner", V_ERROR, "", "", 0, "", "", reason);
		j->done = 1;
	} else if (j->have_m = 1,
	           runner_priv_fd >= 0 && runner_job_copy(j, reason, sizeof reason) < 0) {
		log_warn(qid, "%s; the message will be held", reason);
		verdicts_add(&j->vs, -1, "scanner-runner", V_ERROR, "", "", 0, "", "", reason);
		j->done = 1;
	} else {
		for (size_t i = 0; i < j->m.n_unscannable; i++)
			verdicts_add(&j->vs, -1, "splitter", V_UNSCANNABLE, "", "", 0, "", "",
			             j->m.unscannable[i]);
	}
	j->todo = xcalloc(j->have_m && j->m.n_parts ? j->m.n_parts : 1, 1);
	*out = j;
	return 1;
}

/* The scan of j is complete: write its verdicts and queue it for the group commit. */
static void runner_job_finish(struct stage *st, struct runner_job *j)
{
	size_t bad = 0;
	for (size_t i = 0; i < j->vs.n; i++)
		if (j->vs.lines[i].verdict != V_CLEAN)
			bad++;
	runner_trace_verdicts(&j->e, &j->vs, bad);
	runner_count_verdicts(&j->vs);
	struct buf b;
	buf_init(&b);
	runner_job_uncopy(j);
	free(j->vs.qid);
	j->vs.qid = xstrdup(j->e.qid);
	verdicts_format(&j->vs, &b);
	/* verdicts now; the sync and the move to route/ come in runner_flush, together with
	 * the other entries of this batch: route/ only ever sees complete, durable verdicts. */
	if (spool_entry_write(&j->e, "verdicts", b.data, b.len) < 0)
		die_temp(j->e.qid, "cannot write %s/verdicts: %s", j->dir, strerror(errno));
	buf_free(&b);
	/* The fleet's record of the scan: runner_flush's sync makes it durable with verdicts. */
	export_entry(st->conf, &j->e, EXPORT_SCANNED, NULL);
	log_info(j->e.qid, "scanned results=%zu not_clean=%zu", j->vs.n, bad);
	runner_batch[runner_nbatch++] = j->e; /* still claimed: the lock goes with the rename */
	j->e.fd = -1;
	if (runner_nbatch == RUNNER_BATCH)
		runner_flush(st);
}

/* Between rounds: claim what else waits in scan/ (oldest first, a few per round), so that
 * it is scanned alongside the messages already here instead of after them. */
static void runner_pull(struct stage *st)
{
	char **names;
	size_t n;
	if (runner_nactive >= RUNNER_ACTIVE_MAX)
		return;
	if (spool_list(st->spool.fd[SD_SCAN], 1, &names, &n) < 0) {
		log_warn(NULL, "cannot list %s/scan: %s", st->spool.root, strerror(errno));
		return;
	}
	size_t pulled = 0;
	for (size_t i = 0; i < n && runner_nactive < RUNNER_ACTIVE_MAX && pulled < RUNNER_PULL_MAX;
	     i++) {
		struct runner_job *j;
		if (runner_job_start(st, names[i], &j) > 0) {
			runner_active[runner_nactive++] = j;
			pulled++;
		}
	}
	spool_names_free(names, n);
}

/* Round robin over the active messages until none is left (see struct runner_job). */
static void runner_run(struct stage *st)
{
	while (runner_nactive > 0 && !stage_stopping()) {
		for (size_t k = 0; k < runner_nactive && !stage_stopping(); k++) {
			struct runner_job *j = runner_active[k];
			int64_t t0 = now_ms_monotonic();
			for (int runs = 0;
			     !j->done && runs < RUNNER_SLICE_RUNS &&
			     now_ms_monotonic() - t0 < RUNNER_SLICE_MS && !stage_stopping();
			     runs++)
				runner_job_step(st, j);
			if (j->done)
				runner_job_finish(st, j);
		}
		size_t keep = 0;
		for (size_t k = 0; k < runner_nactive; k++) {
			if (runner_active[k]->done)
				runner_job_free(runner_active[k]);
			else
				runner_active[keep++] = runner_active[k];
		}
		runner_nactive = keep;
		if (stage_stopping())
			break;
		if (runner_nactive > 0) {
			/* What finished this round moves on now, not when the last big one is
			 * done. (With nothing left, the batch stays open for the stage's flush:
			 * a backlog still shares one sync per RUNNER_BATCH entries.) */
			runner_flush(st);
			canary_tick(st, runner_g.sc, runner_g.n);
			/* A paused stage finishes what it holds and claims nothing new. */
			if (!stage_is_paused())
				runner_pull(st);
		}
	}
	/* Abandon safely: the entries stay in scan/ and are scanned again from scratch. */
	for (size_t k = 0; k < runner_nactive; k++) {
		log_info(runner_active[k]->e.qid,
		         "stop requested; scan abandoned, the message stays in scan/");
		runner_job_free(runner_active[k]);
	}
	runner_nactive = 0;
}

static int runner_handle(struct stage *st, const char *qid)
{
	struct runner_job *j;
	int r = runner_job_start(st, qid, &j);
	if (r <= 0)
		return r;
	runner_active[runner_nactive++] = j;
	runner_run(st);
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
	o.broker_fd = runner_broker_fd; /* the scanner's program runs as its user only */
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

static void runner_priv_remove(void)
{
	if (runner_priv_path == NULL || runner_priv_fd < 0)
		return;
	if (remove_tree_at(AT_FDCWD, runner_priv_path) < 0 && errno != ENOENT)
		log_warn(NULL, "cannot remove %s: %s", runner_priv_path, strerror(errno));
}

/* Separated (this runner is not the splitter's user): the private directory for copies,
 * made fresh under $TMPDIR or /tmp (sticky: no one else can rename it away), mode 0700. */
static void runner_priv_init(struct stage *st)
{
	if (conf_role_uid(st->conf, ROLE_SPLITTER) == geteuid())
		return;
	const char *t = getenv("TMPDIR");
	char *tmpl = xasprintf("%s/spoold-runner.XXXXXX", t && t[0] == '/' ? t : "/tmp");
	if (mkdtemp(tmpl) == NULL)
		die_temp(NULL, "cannot make a private directory %s: %s", tmpl, strerror(errno));
	runner_priv_fd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (runner_priv_fd < 0)
		die_temp(NULL, "cannot open %s: %s", tmpl, strerror(errno));
	runner_priv_path = tmpl;
	atexit(runner_priv_remove);
	log_info(NULL, "separated spool: parts are scanned from private copies in %s", tmpl);
}

/* The scanner broker's socket, handed over by spoold on purpose (BROKER_ENV). Without it
 * the scanners run here, as this process's uid: spoold not root, or no scanner_user. */
static void runner_broker_init(void)
{
	const char *s = getenv(BROKER_ENV);
	uint64_t v;
	if (s == NULL)
		return;
	int type = 0;
	socklen_t tl = sizeof type;
	if (parse_u64(s, &v) < 0 || v < 3 || v > INT32_MAX ||
	    getsockopt((int)v, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_SEQPACKET)
		die_temp(NULL, "%s=%s is not the scanner broker's socket", BROKER_ENV, s);
	/* Ours alone: no scanner run here may inherit it. */
	if (fcntl((int)v, F_SETFD, FD_CLOEXEC) < 0)
		die_temp(NULL, "cannot make the broker socket close-on-exec: %s", strerror(errno));
	unsetenv(BROKER_ENV);
	runner_broker_fd = (int)v;
	log_info(NULL, "scanners run through the scanner broker (as scanner_user)");
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
	runner_priv_init(st);
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
	/* An inherited SIGCHLD SIG_IGN would have the kernel reap our scanners, and waitpid
	 * fail: not one status would be real. */
	if (exec_sigchld_default() < 0)
		die_temp(NULL, "cannot reset SIGCHLD: %s", strerror(errno));
	runner_broker_init();
	return stage_main(&st, argc, argv);
}
