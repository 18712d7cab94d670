/*
 * spoolctl ls QUEUE [--json] | show ID | requeue ID | delete ID | hold ID
 *
 *   ls       one line per entry: ID, age, size, sender, recipients, state. QUEUE is
 *            inbound, incoming, scan, route, hold, quarantine, badmail or outbox/<conn>
 *            (a configured connector).
 *   show     every place the ID is found, its envelope, then its trace (one event a line,
 *            with the time made readable).
 *   requeue  hold/<id> -> scan/<id> (a fresh scan; the hold state and any manual-hold
 *            marker are removed). badmail/<id> -> inbound/<id> as a queue file made from
 *            its envelope and message (split again under the same ID), then the badmail
 *            entry is deleted; a crash in between leaves the message in both places, never
 *            in neither. Anything else is refused (quarantine: `quarantine release`).
 *   delete   incoming, scan, route, hold, quarantine, badmail: through trash/. inbound/<id>
 *            (spoolctl inject): renamed into trash/. outbox entries belong to the
 *            connector and are refused.
 *   hold     scan/ or route/ -> hold/, or an entry already in hold/: writes a `manual-hold`
 *            marker and a hold state whose next retry never comes, so the router's retry
 *            timer leaves it alone until `requeue`.
 *
 * Every mutation claims the entry (flock, spool_entry_claim) and moves it with one rename
 * (spool_entry_move), exactly as a stage does, so it is safe while the pipeline runs. An
 * entry a stage is working on is never touched: after ~1 s of trying, exit 75 "busy, try
 * again". Exit 1: not found or not allowed in that state; 64: usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "ctl.h"
#include "entry_names.h"
#include "envelope.h"
#include "queuefile.h"
#include "export.h"
#include "log.h"
#include "qstat.h"
#include "spool.h"
#include "trace.h"
#include "util.h"

#define CLAIM_TRIES    20
#define CLAIM_PAUSE_MS 50

/* ---- ls ------------------------------------------------------------------------------ */

/* Envelope of an inbound queue file: only its head is read, and only when it starts with
 * the magic line. 0 or -1. */
static int q_inbound_envelope(int dirfd, const char *name, struct envelope *env)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -1;
	struct stat st;
	char head[65536];
	ssize_t n = -1;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
		n = pread(fd, head, sizeof head, 0);
	close(fd);
	size_t ml = strlen(QUEUE_FILE_MAGIC);
	if (n < (ssize_t)ml || memcmp(head, QUEUE_FILE_MAGIC, ml) != 0)
		return -1;
	size_t used;
	char reason[128];
	return queuefile_head_parse(head + ml, (size_t)n - ml, env, NULL, &used, reason,
	                            sizeof reason);
}

/* Locked by a stage right now? A shared lock taken and dropped at once: a stage that
 * tries to claim in that instant sees "busy" and looks again a moment later. */
static int q_locked(int dfd)
{
	if (flock(dfd, LOCK_SH | LOCK_NB) < 0)
		return errno == EWOULDBLOCK;
	flock(dfd, LOCK_UN);
	return 0;
}

static const char *q_state(enum spool_dir d, int dfd)
{
	struct stat st;
	if (dfd >= 0 && q_locked(dfd))
		return "active";
	switch (d) {
	case SD_INBOUND:
		return "dropped";
	case SD_INCOMING:
		return "interrupted"; /* unlocked: a crashed split, redone by the splitter */
	case SD_SCAN:
	case SD_ROUTE:
		return "queued";
	case SD_HOLD:
		return dfd >= 0 && fstatat(dfd, ENTRY_MANUAL_HOLD, &st, AT_SYMLINK_NOFOLLOW) == 0
		           ? "manual-hold"
		           : "held";
	case SD_QUARANTINE:
		return "quarantined";
	case SD_BADMAIL:
		return "badmail";
	case SD_OUTBOX:
		return "ready";
	default:
		return "?";
	}
}

static void q_json_str(struct buf *b, const char *s)
{
	buf_addstr(b, "\"");
	json_escape(b, s, strlen(s));
	buf_addstr(b, "\"");
}

/* Resolve QUEUE into a descriptor (caller closes) and its state. Only configured
 * connectors are accepted for outbox/<conn>, so the argument never chooses a path. */
static int q_open_queue(struct conf *c, struct spool *sp, const char *q, enum spool_dir *d)
{
	if (strncmp(q, "outbox/", 7) == 0) {
		if (conf_connector_find(c, q + 7) == NULL)
			return -1;
		*d = SD_OUTBOX;
		return openat(sp->fd[SD_OUTBOX], q + 7,
		              O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	static const enum spool_dir ok[] = {SD_INBOUND, SD_INCOMING,   SD_SCAN,   SD_ROUTE,
	                                    SD_HOLD,    SD_QUARANTINE, SD_BADMAIL};
	for (size_t i = 0; i < ARRAY_LEN(ok); i++)
		if (strcmp(q, spool_dir_name(ok[i])) == 0) {
			*d = ok[i];
			return dup(sp->fd[ok[i]]);
		}
	return -1;
}

int ctl_cmd_ls(struct conf *c, int argc, char **argv)
{
	int json = 0;
	const char *queue = NULL;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = 1;
		else if (queue == NULL && argv[i][0] != '-')
			queue = argv[i];
		else
			ctl_usage();
	}
	if (queue == NULL)
		ctl_usage();
	struct spool sp;
	ctl_spool_open(c, &sp);
	enum spool_dir d = SD__COUNT;
	int qfd = q_open_queue(c, &sp, queue, &d);
	if (qfd < 0) {
		if (errno == ENOENT && d == SD_OUTBOX) {
			qfd = -1; /* a connector that has received nothing yet: empty */
		} else {
			fprintf(
			    stderr,
			    "spoolctl: unknown queue \"%s\" (inbound, incoming, scan, route, hold, "
			    "quarantine, badmail, outbox/<connector>)\n",
			    queue);
			spool_close(&sp);
			return EXIT_USAGE;
		}
	}
	char **names = NULL;
	size_t n = 0;
	if (qfd >= 0 && spool_list(qfd, d != SD_INBOUND, &names, &n) < 0)
		die_temp(NULL, "cannot list %s/%s: %s", sp.root, queue, strerror(errno));
	struct buf out, rc;
	buf_init(&out);
	buf_init(&rc);
	time_t now = time(NULL);
	if (json)
		buf_addstr(&out, "[");
	else
		buf_printf(&out, "%-26s %8s %10s %-12s %-24s %s\n", "ID", "AGE", "SIZE", "STATE",
		           "SENDER", "RECIPIENTS");
	size_t shown = 0;
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (fstatat(qfd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* moved on meanwhile */
		int dfd = -1;
		if (S_ISDIR(st.st_mode))
			dfd =
			    openat(qfd, names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		struct envelope env;
		envelope_init(&env);
		char reason[128];
		int have_env = dfd >= 0 ? envelope_read_at(dfd, &env, reason, sizeof reason) == 0
		                        : q_inbound_envelope(qfd, names[i], &env) == 0;
		long long age = qstat_age(names[i], st.st_mtime, now);
		unsigned long long size = qstat_tree_bytes(qfd, names[i]);
		const char *state = q_state(d, dfd);
		if (json) {
			buf_addstr(&out, shown ? ",{\"id\":" : "{\"id\":");
			q_json_str(&out, names[i]);
			buf_printf(&out,
			           ",\"age\":%lld,\"size\":%llu,\"state\":\"%s\",\"sender\":", age,
			           size, state);
			if (have_env)
				q_json_str(&out, env.sender);
			else
				buf_addstr(&out, "null");
			buf_addstr(&out, ",\"recipients\":[");
			for (size_t k = 0; have_env && k < env.n_rcpts; k++) {
				if (k)
					buf_addstr(&out, ",");
				q_json_str(&out, env.rcpts[k]);
			}
			buf_addstr(&out, "]}");
		} else {
			struct buf ename;
			buf_init(&ename);
			escape_bytes(&ename, names[i], strlen(names[i]), 64);
			buf_reset(&rc);
			if (have_env) {
				for (size_t k = 0; k < env.n_rcpts; k++) {
					if (k)
						buf_addstr(&rc, ",");
					escape_bytes(&rc, env.rcpts[k], strlen(env.rcpts[k]), 256);
				}
			} else {
				buf_addstr(&rc, "-");
			}
			struct buf es;
			buf_init(&es);
			if (have_env)
				escape_bytes(&es, env.sender[0] ? env.sender : "<>",
				             strlen(env.sender[0] ? env.sender : "<>"), 256);
			else
				buf_addstr(&es, "-");
			buf_printf(&out, "%-26s %7llds %10llu %-12s %-24s %s\n", buf_cstr(&ename),
			           age, size, state, buf_cstr(&es), buf_cstr(&rc));
			buf_free(&es);
			buf_free(&ename);
		}
		shown++;
		envelope_free(&env);
		if (dfd >= 0)
			close(dfd);
	}
	if (json)
		buf_addstr(&out, "]\n");
	fwrite(out.data, 1, out.len, stdout);
	buf_free(&out);
	buf_free(&rc);
	spool_names_free(names, n);
	if (qfd >= 0)
		close(qfd);
	spool_close(&sp);
	return 0;
}

/* ---- show ---------------------------------------------------------------------------- */

static void q_print_trace(int dfd)
{
	struct buf t, o;
	buf_init(&t);
	buf_init(&o);
	if (read_file_at(dfd, ENTRY_TRACE, &t, 16 << 20) < 0) {
		printf("  (no trace: %s)\n", strerror(errno));
		buf_free(&t);
		return;
	}
	char *line = t.data;
	while (line && *line) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		char *end;
		double ts = strtod(line, &end);
		char when[64] = "?";
		if (end != line && *end == ' ') {
			time_t s = (time_t)ts;
			struct tm tm;
			if (localtime_r(&s, &tm))
				strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
			terminal_escape(&o, end + 1, strlen(end + 1), 0);
			printf("  %s.%03d %s\n", when, (int)((ts - (double)s) * 1000 + 0.5) % 1000,
			       buf_cstr(&o));
		} else {
			terminal_escape(&o, line, strlen(line), 0);
			printf("  %s\n", buf_cstr(&o));
		}
		buf_reset(&o);
		if (!nl)
			break;
		line = nl + 1;
	}
	buf_free(&t);
	buf_free(&o);
}

static void q_show_dir(int dfd, const char *place)
{
	struct envelope env;
	char reason[128];
	envelope_init(&env);
	printf("location: %s\n", place);
	if (envelope_read_at(dfd, &env, reason, sizeof reason) == 0) {
		struct buf b;
		buf_init(&b);
		escape_bytes(&b, env.sender, strlen(env.sender), 1024);
		printf("sender: %s\n", env.sender[0] ? buf_cstr(&b) : "<>");
		for (size_t k = 0; k < env.n_rcpts; k++) {
			buf_reset(&b);
			escape_bytes(&b, env.rcpts[k], strlen(env.rcpts[k]), 1024);
			printf("recipient: %s\n", buf_cstr(&b));
		}
		buf_free(&b);
	}
	envelope_free(&env);
	printf("trace:\n");
	q_print_trace(dfd);
}

int ctl_cmd_show(struct conf *c, int argc, char **argv)
{
	if (argc != 1)
		ctl_usage();
	const char *qid = argv[0];
	if (!spool_qid_valid(qid)) {
		fprintf(stderr, "spoolctl: \"%.64s\" is not a queue ID\n", qid);
		return EXIT_USAGE;
	}
	struct spool sp;
	ctl_spool_open(c, &sp);
	int found = 0;
	struct stat st;
	printf("id: %s\n", qid);
	if (fstatat(sp.fd[SD_INBOUND], qid, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		printf("location: inbound (not split yet)\n");
		found++;
	}
	static const enum spool_dir dirs[] = {SD_INCOMING,   SD_SCAN, SD_ROUTE,
	                                      SD_QUARANTINE, SD_HOLD, SD_BADMAIL};
	for (size_t i = 0; i < ARRAY_LEN(dirs); i++) {
		int dfd =
		    openat(sp.fd[dirs[i]], qid, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd < 0)
			continue;
		q_show_dir(dfd, spool_dir_name(dirs[i]));
		close(dfd);
		found++;
	}
	for (size_t i = 0; i < c->n_connectors; i++) {
		int ofd = openat(sp.fd[SD_OUTBOX], c->connectors[i].name,
		                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (ofd < 0)
			continue;
		int dfd = openat(ofd, qid, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd >= 0) {
			char place[300];
			snprintf(place, sizeof place, "outbox/%s", c->connectors[i].name);
			q_show_dir(dfd, place);
			close(dfd);
			found++;
		}
		close(ofd);
	}
	spool_close(&sp);
	if (!found) {
		fprintf(stderr,
		        "spoolctl: %s: not found in the spool (delivered and removed, or "
		        "deleted)\n",
		        qid);
		return 1;
	}
	return 0;
}

/* ---- mutations ----------------------------------------------------------------------- */

/* Find and claim the entry; exits with the right code when that is impossible. */
static void q_claim(struct spool *sp, const char *qid, struct spool_entry *e)
{
	if (!spool_qid_valid(qid))
		die_perm(EXIT_USAGE, "\"%.64s\" is not a queue ID", qid);
	trace_set_prog("spoolctl");
	for (int t = 0; t < CLAIM_TRIES; t++) {
		enum spool_dir where;
		char conn[256];
		if (spool_qid_locate(sp, qid, &where, conn, sizeof conn) == 0) {
			struct stat st;
			if (fstatat(sp->fd[SD_INBOUND], qid, &st, AT_SYMLINK_NOFOLLOW) == 0) {
				e->where = SD_INBOUND;
				e->fd = -1;
				e->synced = 0;
				memcpy(e->qid, qid, SPOOL_QID_LEN + 1);
				e->sp = sp;
				return;
			}
			fprintf(stderr, "spoolctl: %s: not found in the spool\n", qid);
			exit(1);
		}
		if (where == SD_OUTBOX) {
			fprintf(stderr,
			        "spoolctl: %s is in outbox/%s: it belongs to the connector now\n",
			        qid, conn);
			exit(1);
		}
		int r = spool_entry_claim(sp, where, qid, e);
		if (r == 1)
			return;
		if (r < 0)
			die_temp(qid, "cannot claim %s/%s/%s: %s", sp->root, spool_dir_name(where),
			         qid, strerror(errno));
		/* Locked (a stage works on it, or the router's hold timer glances at it), or it
		 * moved on between locate and claim: look again shortly. */
		poll(NULL, 0, CLAIM_PAUSE_MS);
	}
	fprintf(stderr, "spoolctl: %s: busy, try again (a stage is working on it)\n", qid);
	exit(EXIT_TEMPFAIL);
}

static int q_refuse(struct spool_entry *e, const char *what, const char *why)
{
	fprintf(stderr, "spoolctl: cannot %s %s: it is in %s/; %s\n", what, e->qid,
	        spool_dir_name(e->where), why);
	spool_entry_release(e);
	return 1;
}

static int q_unlink_opt(int dfd, const char *name)
{
	return unlinkat(dfd, name, 0) < 0 && errno != ENOENT ? -1 : 0;
}

/* badmail/<qid> -> incoming/<qid>, to be split again under the same ID. */
static int q_requeue_badmail(const struct conf *c, struct spool_entry *e)
{
	struct spool *sp = e->sp;
	int mfd = openat(e->fd, ENTRY_MESSAGE, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	if (mfd < 0 || fstat(mfd, &st) < 0 || !S_ISREG(st.st_mode)) {
		if (mfd >= 0)
			close(mfd);
		return q_refuse(e, "requeue", "it has no message file to split again");
	}
	close(mfd);
	/* The entry goes back to the splitter whole, under its own queue ID and with its
	 * trace: a work directory in incoming/ that holds its message is what a split cut
	 * short by a crash leaves, and the splitter splits it again from scratch (it removes
	 * parts and manifest itself; a message that still starts with the queue-file magic is
	 * stripped again, else the envelope here is used). What made it badmail goes: the
	 * reason, and the poison counter, which would send it straight back. */
	if (q_unlink_opt(e->fd, ENTRY_REASON) < 0 || q_unlink_opt(e->fd, ENTRY_ATTEMPTS) < 0)
		die_temp(e->qid, "cannot reset %s/badmail/%s: %s", sp->root, e->qid,
		         strerror(errno));
	/* The second pass is keyed apart from the first: its intake record would otherwise
	 * repeat the first's key (same queue ID, round 0), and the database keep the first. */
	if (export_requeued(c, e) < 0)
		die_temp(e->qid, "cannot write %s/badmail/%s/requeues: %s", sp->root, e->qid,
		         strerror(errno));
	trace_add(e->fd, e->qid, "requeue from=badmail to=incoming by=spoolctl");
	/* spool_entry_move syncs first, so the removals are durable before the move; one
	 * rename, so a crash leaves the entry in badmail/ or in incoming/, never in both. */
	if (spool_entry_move(e, SD_INCOMING) < 0)
		die_temp(e->qid, "cannot move %s/badmail/%s to incoming/: %s", sp->root, e->qid,
		         strerror(errno));
	printf("%s requeued: badmail -> incoming (split again under the same ID)\n", e->qid);
	return 0;
}

/* The commands on one queue ID: exactly one argument, the spool opened, the entry
 * claimed (q_claim exits when it cannot be). */
static void q_open_one(struct conf *c, int argc, char **argv, struct spool *sp,
                       struct spool_entry *e)
{
	if (argc != 1)
		ctl_usage();
	ctl_spool_open(c, sp);
	q_claim(sp, argv[0], e);
}

void ctl_requeue_hold(const struct conf *c, struct spool_entry *e, const char *by)
{
	struct spool *sp = e->sp;
	/* The retry state goes with the requeue: the operator decided, so the next hold
	 * (if any) starts afresh, and a manual hold is lifted. */
	if (q_unlink_opt(e->fd, ENTRY_MANUAL_HOLD) < 0 || q_unlink_opt(e->fd, ENTRY_HOLD) < 0)
		die_temp(e->qid, "cannot remove the hold state of %s/hold/%s: %s", sp->root, e->qid,
		         strerror(errno));
	/* Without its `hold` file the entry is back in hold round 0: a new pass keeps the
	 * records of its rescan apart from those of the first scan. */
	if (export_requeued(c, e) < 0)
		die_temp(e->qid, "cannot write %s/hold/%s/requeues: %s", sp->root, e->qid,
		         strerror(errno));
	trace_add(e->fd, e->qid, "requeue from=hold to=scan by=spoolctl-%s", by);
	/* spool_entry_move syncs first: the hold state removed above is durable
	 * before the entry leaves hold/. */
	if (spool_entry_move(e, SD_SCAN) < 0)
		die_temp(e->qid, "cannot move %s/hold/%s to scan/: %s", sp->root, e->qid,
		         strerror(errno));
	log_audit(e->qid, "requeued from hold/ to scan/ by spoolctl %s", by);
	printf("%s requeued: hold -> scan\n", e->qid);
}

/* Filters of requeue --all: shell patterns (fnmatch) on the sender, any recipient, and
 * the reason (hold: the hold reason file; badmail: its reason). NULL matches all. */
struct q_filter {
	const char *from, *to, *reason;
};

static int q_filter_match(struct spool_entry *e, const struct q_filter *f)
{
	if (f->from || f->to) {
		struct envelope env;
		char why[128];
		envelope_init(&env);
		int ok = envelope_read_at(e->fd, &env, why, sizeof why) == 0;
		if (ok && f->from)
			ok = fnmatch(f->from, env.sender, FNM_CASEFOLD) == 0;
		if (ok && f->to) {
			ok = 0;
			for (size_t i = 0; i < env.n_rcpts && !ok; i++)
				ok = fnmatch(f->to, env.rcpts[i], FNM_CASEFOLD) == 0;
		}
		envelope_free(&env);
		if (!ok)
			return 0;
	}
	if (f->reason) {
		struct buf r;
		buf_init(&r);
		int ok = read_file_at(e->fd, ENTRY_REASON, &r, 65536) == 0;
		/* One line per reason: a match of any line counts. */
		int hit = 0;
		for (char *line = ok ? r.data : NULL; line && *line && !hit;) {
			char *nl = strchr(line, '\n');
			if (nl)
				*nl = '\0';
			hit = fnmatch(f->reason, line, 0) == 0;
			line = nl ? nl + 1 : NULL;
		}
		buf_free(&r);
		if (!hit)
			return 0;
	}
	return 1;
}

/* requeue --all hold|badmail [--from PAT] [--to PAT] [--reason PAT]: each match as one
 * requeue would; busy entries are skipped and counted. */
static int q_requeue_all(struct conf *c, int argc, char **argv)
{
	struct q_filter f = {NULL, NULL, NULL};
	const char *queue = NULL;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--all") == 0 && i + 1 < argc)
			queue = argv[++i];
		else if (strcmp(argv[i], "--from") == 0 && i + 1 < argc)
			f.from = argv[++i];
		else if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
			f.to = argv[++i];
		else if (strcmp(argv[i], "--reason") == 0 && i + 1 < argc)
			f.reason = argv[++i];
		else
			ctl_usage();
	}
	enum spool_dir d;
	if (queue && strcmp(queue, "hold") == 0)
		d = SD_HOLD;
	else if (queue && strcmp(queue, "badmail") == 0)
		d = SD_BADMAIL;
	else
		die_perm(EXIT_USAGE, "requeue --all takes hold or badmail");
	struct spool sp;
	ctl_spool_open(c, &sp);
	trace_set_prog("spoolctl");
	char **names;
	size_t n, done = 0, busy = 0, skipped = 0;
	if (spool_list(sp.fd[d], 1, &names, &n) < 0)
		die_temp(NULL, "cannot list %s/%s: %s", sp.root, queue, strerror(errno));
	for (size_t i = 0; i < n; i++) {
		struct spool_entry e;
		int r = spool_entry_claim(&sp, d, names[i], &e);
		if (r < 0)
			die_temp(names[i], "cannot claim %s/%s/%s: %s", sp.root, queue, names[i],
			         strerror(errno));
		if (r == 0) {
			busy += errno != ENOENT;
			continue;
		}
		if (!q_filter_match(&e, &f)) {
			skipped++;
		} else if (d == SD_HOLD) {
			ctl_requeue_hold(c, &e, "requeue");
			done++;
		} else if (q_requeue_badmail(c, &e) == 0) {
			log_audit(e.qid, "requeued from badmail/ to incoming/ by spoolctl");
			done++;
		}
		spool_entry_release(&e);
	}
	spool_names_free(names, n);
	printf("requeued %zu from %s/; %zu did not match, %zu busy\n", done, queue, skipped, busy);
	spool_close(&sp);
	return 0;
}

int ctl_cmd_requeue(struct conf *c, int argc, char **argv)
{
	if (argc > 0 && strcmp(argv[0], "--all") == 0)
		return q_requeue_all(c, argc, argv);
	struct spool sp;
	struct spool_entry e;
	q_open_one(c, argc, argv, &sp, &e);
	int rc = 0;
	if (e.where == SD_HOLD) {
		ctl_requeue_hold(c, &e, "requeue");
	} else if (e.where == SD_BADMAIL) {
		rc = q_requeue_badmail(c, &e);
		if (rc == 0)
			log_audit(e.qid, "requeued from badmail/ to incoming/ by spoolctl");
	} else if (e.where == SD_QUARANTINE) {
		rc = q_refuse(&e, "requeue", "use `spoolctl quarantine release`");
	} else {
		rc = q_refuse(&e, "requeue", "it is already on its way through the pipeline");
	}
	spool_entry_release(&e);
	spool_close(&sp);
	return rc;
}

int ctl_cmd_delete(struct conf *c, int argc, char **argv)
{
	struct spool sp;
	struct spool_entry e;
	q_open_one(c, argc, argv, &sp, &e);
	if (e.where == SD_INBOUND) {
		/* Not claimed yet: the rename is the claim, and the splitter's own claim is a
		 * rename too, so exactly one of us gets it. */
		char name[SPOOL_QID_LEN + 16];
		snprintf(name, sizeof name, "%s.inbound", e.qid);
		if (renameat(sp.fd[SD_INBOUND], e.qid, sp.fd[SD_TRASH], name) < 0) {
			if (errno == ENOENT) {
				fprintf(stderr,
				        "spoolctl: %s: busy, try again (the splitter took it)\n",
				        e.qid);
				return EXIT_TEMPFAIL;
			}
			die_temp(e.qid, "cannot move %s/inbound/%s to trash/: %s", sp.root, e.qid,
			         strerror(errno));
		}
		fsync_dir(sp.fd[SD_INBOUND]);
		remove_tree_at(sp.fd[SD_TRASH], name);
	} else {
		enum spool_dir from = e.where;
		/* The fleet's record; the trash move syncs it before the entry goes. */
		char detail[64];
		snprintf(detail, sizeof detail, "uid=%ld from=%s", (long)log_caller(),
		         spool_dir_name(from));
		export_entry(c, &e, EXPORT_DELETED, detail);
		if (spool_entry_trash(&e) < 0)
			die_temp(e.qid, "cannot delete %s/%s/%s: %s", sp.root, spool_dir_name(from),
			         e.qid, strerror(errno));
		spool_entry_release(&e);
		log_audit(e.qid, "deleted from %s/ by spoolctl", spool_dir_name(from));
	}
	printf("%s deleted\n", e.qid);
	spool_close(&sp);
	return 0;
}

int ctl_cmd_hold(struct conf *c, int argc, char **argv)
{
	struct spool sp;
	struct spool_entry e;
	q_open_one(c, argc, argv, &sp, &e);
	if (e.where != SD_SCAN && e.where != SD_ROUTE && e.where != SD_HOLD) {
		int rc =
		    e.where == SD_INBOUND
		        ? (fprintf(stderr, "spoolctl: %s is not split yet; try again shortly\n",
		                   e.qid),
		           EXIT_TEMPFAIL)
		        : q_refuse(&e, "hold", "only scan/, route/ and hold/ entries can be held");
		spool_close(&sp);
		return rc;
	}
	uint64_t now = (uint64_t)time(NULL);
	char mark[128], hold[160];
	snprintf(mark, sizeof mark, "manual by=spoolctl time=%llu\n", (unsigned long long)now);
	/* next = never: the router's retry timer compares next with now and so never picks
	 * a manual hold; only requeue lifts it. */
	snprintf(hold, sizeof hold, "hold attempts=0 first=%llu next=%llu manual=1\n",
	         (unsigned long long)now, (unsigned long long)UINT64_MAX);
	enum spool_dir from = e.where;
	if (spool_entry_write(&e, ENTRY_MANUAL_HOLD, mark, strlen(mark)) < 0 ||
	    spool_entry_write(&e, ENTRY_HOLD, hold, strlen(hold)) < 0 || spool_entry_sync(&e) < 0)
		die_temp(e.qid, "cannot write the hold state of %s/%s/%s: %s", sp.root,
		         spool_dir_name(from), e.qid, strerror(errno));
	trace_add(e.fd, e.qid, "hold manual=1 from=%s by=spoolctl", spool_dir_name(from));
	if (from != SD_HOLD && spool_entry_move(&e, SD_HOLD) < 0)
		die_temp(e.qid, "cannot move %s/%s/%s to hold/: %s", sp.root, spool_dir_name(from),
		         e.qid, strerror(errno));
	spool_entry_release(&e);
	log_audit(e.qid, "held by spoolctl (from %s/)", spool_dir_name(from));
	printf("%s held (manual)\n", e.qid);
	spool_close(&sp);
	return 0;
}
