/*
 * scanner-runner - runs the configured scanners over every part of a split message
 * (docs/INTERNALS.md, state S2 -> S3).
 *
 * Claims scan/<qid>/, runs every primary scanner over every NNNN.ATT through its backend
 * (scanner.h: per-attachment, one process per part, as MailEnable does; per-message, one
 * process for all parts; clamd, the descriptor is handed to clamd), runs the backup
 * scanners only when a primary failed, writes "verdicts" and commits to route/ with one
 * rename. This file is the stage: which scanner's turn it is, slices, budgets, copies,
 * the commit; how a scanner is run is the backend's. The router decides;
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
#include <sys/stat.h>
#include <unistd.h>

#include "canary.h"
#include "conf.h"
#include "crash.h"
#include "entry_names.h"
#include "exec.h"
#include "export.h"
#include "log.h"
#include "manifest.h"
#include "metrics.h"
#include "scanner.h"
#include "spool.h"
#include "stage.h"
#include "trace.h"
#include "util.h"
#include "verdict.h"

struct runner {
	struct scanner *sc;
	size_t n;
};

static struct runner runner_g;

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
	size_t s;              /* the scanner (index into runner_g.sc) now or next */
	int backups;           /* 0: the primaries' turn; 1: the backups' (a primary failed) */
	int primary_failed;    /* a primary's pass added an error line */
	int in_pass;           /* scanner s has started on this message */
	size_t pass_first;     /* vs.n when scanner s started */
	unsigned char *todo;   /* parts with no verdict from scanner s yet */
	struct scan_pass pass; /* scanner s's pass: what its backend is given */
	int degraded_seen;     /* scanner s was degraded at some point of its pass */
	int64_t used_ms;       /* time spent scanning this message (its own runs only) */
	long used_runs;        /* scanner runs for this message */
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
};

static struct runner_job *runner_active[RUNNER_ACTIVE_MAX];
static size_t runner_nactive;

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
	struct scanner *rs = &runner_g.sc[j->s];
	/* A degraded scanner still ran (its verdicts stay on record, and an infected one still
	 * quarantines), but whatever it said cannot be trusted as clean: one error line per
	 * part, from the same scanner, so that a backup can cover it as for any failed
	 * primary, and without one the message is held. */
	if (j->degraded_seen) {
		char why[600];
		snprintf(why, sizeof why, "scanner degraded: %s", rs->reason);
		for (size_t i = 0; i < j->m.n_parts; i++)
			scan_pass_add(&j->pass, rs, (int)j->m.parts[i].index, V_ERROR, "",
			              "degraded", 0, rs->version, "", why, 0);
		log_warn(j->e.qid, "scanner %s is degraded (%s); the message will be held",
		         rs->conf->name, rs->reason);
		trace_add(j->e.fd, j->e.qid, "canary scanner=%s state=degraded since=%lld",
		          rs->conf->name, (long long)rs->since);
	}
	/* A part skipped on purpose (the raw part of a message already found infected) is
	 * no failure: a backup would only scan again what cannot change the outcome. */
	for (size_t i = j->pass_first; i < j->vs.n && !j->backups; i++)
		if (j->vs.lines[i].verdict == V_ERROR &&
		    strcmp(j->vs.lines[i].exit, SCAN_EXIT_SKIPPED) != 0)
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

/* Point j's pass at what scanner s is to be given (its todo flags are kept). */
static void runner_job_pass_init(struct stage *st, struct runner_job *j)
{
	j->pass.st = st;
	j->pass.qid = j->e.qid;
	j->pass.dir = j->dir;
	j->pass.dirfd = j->part_fd;
	j->pass.m = &j->m;
	j->pass.todo = j->todo;
	j->pass.backup = j->backups;
	j->pass.vs = &j->vs;
}

/* Over budget: every part that still lacks a verdict from a scanner of this turn gets an
 * error line saying so (the router holds the message), and the scan ends here. No backup
 * runs after it: the budget is for the message, whichever scanner spends it. */
static void runner_job_budget_fail(struct stage *st, struct runner_job *j)
{
	const struct conf_runner *rc = &st->conf->runner;
	char why[300];
	size_t n = 0;
	snprintf(why, sizeof why,
	         "scan budget exceeded (%lld ms and %ld runs used; max_message_scan_time = %d s, "
	         "max_message_scan_runs = %d): part not scanned",
	         (long long)j->used_ms, j->used_runs, rc->max_message_scan_time,
	         rc->max_message_scan_runs);
	runner_job_pass_init(st, j);
	for (size_t s = j->s; s < runner_g.n; s++) {
		const struct scanner *rs = &runner_g.sc[s];
		if (!!rs->conf->backup != j->backups)
			continue;
		for (size_t i = 0; i < j->m.n_parts; i++) {
			/* The scanner in its pass owes only the parts still in todo. */
			if (s == j->s && j->in_pass && !j->todo[i])
				continue;
			scan_pass_add(&j->pass, rs, (int)j->m.parts[i].index, V_ERROR, "", "budget",
			              0, rs->version, "", why, 0);
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
	struct scanner *rs = &runner_g.sc[j->s];
	if (!j->in_pass) {
		j->in_pass = 1;
		j->pass_first = j->vs.n;
		j->degraded_seen = 0;
		memset(j->todo, 1, j->m.n_parts);
		runner_job_pass_init(st, j);
		j->pass.rounds = 0;
	}
	j->degraded_seen |= rs->degraded;
	if (j->m.n_parts == 0) {
		runner_job_pass_end(j);
		return;
	}
	int64_t t0 = now_ms_monotonic();
	/* The backend: one process for one part (per-attachment) or for the parts left
	 * (per-message), or one clamd session for all of them. */
	int finished = rs->ops->scan(rs, &j->pass);
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

/* spoold_parts_scanned_total{scanner,verdict}: one per part and scanner that scanned it. */
static void runner_count_verdicts(const struct verdicts *vs)
{
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		char esc[256], labels[400];
		/* A skipped part was not scanned: it is no part scanned, of any verdict. */
		if (l->part < 0 || strcmp(l->exit, SCAN_EXIT_SKIPPED) == 0)
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
		char name[16], hex[65];
		manifest_part_name(mp->index, name);
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
	int r = spool_entry_claim_rw(&st->spool, SD_SCAN, qid, &j->e);
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
	if (spool_entry_write(&j->e, ENTRY_VERDICTS, b.data, b.len) < 0)
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

static void runner_recover(struct stage *st)
{
	runner_g.n = st->conf->n_scanners;
	runner_g.sc = xcalloc(runner_g.n, sizeof *runner_g.sc);
	for (size_t i = 0; i < runner_g.n; i++)
		scanner_setup(&runner_g.sc[i], &st->conf->scanners[i], st->conf->path);
	runner_priv_init(st);
	for (size_t i = 0; i < runner_g.n; i++)
		runner_g.sc[i].ops->version(&runner_g.sc[i], runner_g.sc[i].version,
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
	scanner_broker_init();
	return stage_main(&st, argc, argv);
}
