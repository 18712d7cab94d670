/*
 * spoolctl quarantine - the quarantine as a store (docs/OUTBOX.md, docs/INTERNALS.md).
 *
 *   list [--json]   ID, date, sender, recipients, reason, virus names
 *   show ID         the report, then the trace
 *   release ID      back to route/ with a "release" marker: the router delivers it through
 *                   its own fan-out, without a rescan and without looking at the verdicts
 *   delete ID       through trash/
 *   expire          remove entries older than router.quarantine_days
 *
 * Every ID is checked with spool_qid_valid before it is used in a path. Each change is
 * one rename of a claimed (flock'd) entry, so it races safely with the router.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "ctl.h"
#include "entry_names.h"
#include "envelope.h"
#include "export.h"
#include "log.h"
#include "spool.h"
#include "trace.h"
#include "util.h"

/* The raw (still JSON-escaped) string value of "key":"..." in a report.json. */
static void qr_json_str(const char *j, const char *key, struct buf *out)
{
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\":\"", key);
	const char *p = strstr(j, pat);
	if (!p)
		return;
	for (p += strlen(pat); *p && *p != '"'; p++) {
		if (*p == '\\' && p[1])
			buf_add(out, p++, 1);
		buf_add(out, p, 1);
	}
}

/* Whether the report names parts no scanner saw in full (report.json "not_scanned", an
 * empty list when there are none): a release delivers them unscanned, which the
 * administrator must be told at the moment of release, not only in the report. */
static int qr_has_unscanned(int dfd)
{
	struct buf j;
	buf_init(&j);
	int r = read_file_at(dfd, ENTRY_REPORT_JSON, &j, 1 << 20) == 0 &&
	        strstr(buf_cstr(&j), "\"not_scanned\":[{") != NULL;
	buf_free(&j);
	return r;
}

struct qr_entry {
	char qid[SPOOL_QID_LEN + 1];
	long long time;
	struct buf reason, viruses_json, viruses_text, sender, rcpts_json, rcpts_text;
};

static int qr_load(int qfd, const char *qid, struct qr_entry *q)
{
	struct buf j;
	struct envelope env;
	char reason[256];
	int dfd = openat(qfd, qid, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return -1;
	memcpy(q->qid, qid, sizeof q->qid);
	buf_init(&q->reason);
	buf_init(&q->viruses_json);
	buf_init(&q->viruses_text);
	buf_init(&q->sender);
	buf_init(&q->rcpts_json);
	buf_init(&q->rcpts_text);
	buf_init(&j);
	envelope_init(&env);
	q->time = 0;
	if (read_file_at(dfd, ENTRY_REPORT_JSON, &j, 1 << 20) == 0) {
		const char *s = buf_cstr(&j);
		qr_json_str(s, "reason", &q->reason);
		const char *t = strstr(s, "\"time\":");
		if (t)
			q->time = strtoll(t + 7, NULL, 10);
		for (const char *v = strstr(s, "\"virus\":\""); v;
		     v = strstr(v + 1, "\"virus\":\"")) {
			struct buf one;
			buf_init(&one);
			qr_json_str(v, "virus", &one);
			/* Several scanners, or the part and the whole message, name one virus. */
			struct buf wrap, pat;
			buf_init(&wrap);
			buf_init(&pat);
			buf_printf(&wrap, ",%s,", buf_cstr(&q->viruses_text));
			buf_printf(&pat, ",%s,", buf_cstr(&one));
			int dup = strstr(buf_cstr(&wrap), buf_cstr(&pat)) != NULL;
			buf_free(&wrap);
			buf_free(&pat);
			if (dup) {
				buf_free(&one);
				continue;
			}
			buf_printf(&q->viruses_json, "%s\"%s\"", q->viruses_json.len ? "," : "",
			           buf_cstr(&one));
			buf_printf(&q->viruses_text, "%s%s", q->viruses_text.len ? "," : "",
			           buf_cstr(&one));
			buf_free(&one);
		}
	}
	if (q->reason.len == 0)
		buf_addstr(&q->reason, "unknown");
	if (envelope_read_at(dfd, &env, reason, sizeof reason) == 0) {
		json_escape(&q->sender, env.sender, strlen(env.sender));
		for (size_t i = 0; i < env.n_rcpts; i++) {
			buf_printf(&q->rcpts_json, "%s\"", i ? "," : "");
			json_escape(&q->rcpts_json, env.rcpts[i], strlen(env.rcpts[i]));
			buf_addstr(&q->rcpts_json, "\"");
			if (i)
				buf_addstr(&q->rcpts_text, ",");
			escape_bytes(&q->rcpts_text, env.rcpts[i], strlen(env.rcpts[i]), 998);
		}
	}
	envelope_free(&env);
	buf_free(&j);
	close(dfd);
	return 0;
}

static void qr_free(struct qr_entry *q)
{
	buf_free(&q->reason);
	buf_free(&q->viruses_json);
	buf_free(&q->viruses_text);
	buf_free(&q->sender);
	buf_free(&q->rcpts_json);
	buf_free(&q->rcpts_text);
}

static int qr_list(struct spool *sp, int json)
{
	char **names;
	size_t n;
	if (spool_list(sp->fd[SD_QUARANTINE], 1, &names, &n) < 0)
		die_temp(NULL, "cannot list %s/quarantine: %s", sp->root, strerror(errno));
	if (json)
		printf("[");
	else
		printf("%-26s %-20s %-10s %-30s %s %s\n", "ID", "DATE", "REASON", "SENDER",
		       "RECIPIENTS", "VIRUSES");
	int first = 1;
	for (size_t i = 0; i < n; i++) {
		struct qr_entry q;
		if (qr_load(sp->fd[SD_QUARANTINE], names[i], &q) < 0)
			continue; /* released or deleted meanwhile */
		char date[32] = "-";
		time_t t = (time_t)q.time;
		struct tm tm;
		if (q.time > 0 && gmtime_r(&t, &tm))
			strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
		if (json)
			printf(
			    "%s\n {\"id\":\"%s\",\"date\":\"%s\",\"time\":%lld,\"sender\":\"%s\","
			    "\"recipients\":[%s],\"reason\":\"%s\",\"viruses\":[%s]}",
			    first ? "" : ",", q.qid, date, q.time, buf_cstr(&q.sender),
			    buf_cstr(&q.rcpts_json), buf_cstr(&q.reason),
			    buf_cstr(&q.viruses_json));
		else {
			struct buf r, sd, rc, v;
			buf_init(&r);
			buf_init(&sd);
			buf_init(&rc);
			buf_init(&v);
			terminal_escape(&r, q.reason.data, q.reason.len, 0);
			terminal_escape(&sd, q.sender.data, q.sender.len, 0);
			terminal_escape(&rc, q.rcpts_text.data, q.rcpts_text.len, 0);
			terminal_escape(&v, q.viruses_text.data, q.viruses_text.len, 0);
			printf("%-26s %-20s %-10s %-30s %s %s\n", q.qid, date, buf_cstr(&r),
			       sd.len ? buf_cstr(&sd) : "<>", buf_cstr(&rc),
			       v.len ? buf_cstr(&v) : "-");
			buf_free(&r);
			buf_free(&sd);
			buf_free(&rc);
			buf_free(&v);
		}
		first = 0;
		qr_free(&q);
	}
	if (json)
		printf("%s]\n", first ? "" : "\n");
	spool_names_free(names, n);
	return 0;
}

static void qr_print_file(int dfd, const char *name)
{
	struct buf b, o;
	buf_init(&b);
	buf_init(&o);
	if (read_file_at(dfd, name, &b, 16 << 20) == 0) {
		terminal_escape(&o, b.data, b.len, 1);
		fwrite(o.data, 1, o.len, stdout);
	}
	buf_free(&b);
	buf_free(&o);
}

/* Claim quarantine/ID; exits 1 with a message when it is not there. */
static void qr_claim(struct spool *sp, const char *qid, struct spool_entry *e)
{
	int r = spool_entry_claim(sp, SD_QUARANTINE, qid, e);
	if (r == 1)
		return;
	if (r == 0 && errno == EWOULDBLOCK)
		die_temp(qid, "quarantine/%s is busy (the router is working on it); try again",
		         qid);
	fprintf(stderr, "spoolctl: %s is not in quarantine\n", qid);
	exit(1);
}

/* Remove quarantine entries older than days, by the time of their report. */

/* The fleet's record of a release or a delete, with the uid that asked (an action from
 * the fleet's database names its requester in the actions table: the audit row). */
static void qr_export(const struct conf *c, struct spool_entry *e, int kind)
{
	char detail[64];
	snprintf(detail, sizeof detail, "uid=%ld", (long)log_caller());
	export_entry(c, e, kind, detail);
}

int ctl_cmd_quarantine(struct conf *c, int argc, char **argv)
{
	struct spool sp;
	struct spool_entry e;
	if (argc < 1)
		ctl_usage();
	const char *sub = argv[0];
	int want_id =
	    strcmp(sub, "show") == 0 || strcmp(sub, "release") == 0 || strcmp(sub, "delete") == 0;
	if (want_id && argc != 2)
		ctl_usage();
	/* The ID names a directory: checked before any path is built from it. */
	if (want_id && !spool_qid_valid(argv[1])) {
		fprintf(stderr, "spoolctl: '%s' is not a queue ID\n", argv[1]);
		return EXIT_USAGE;
	}
	trace_set_prog("spoolctl");
	ctl_spool_open(c, &sp);
	int rc = 0;
	if (strcmp(sub, "list") == 0) {
		if (argc > 2 || (argc == 2 && strcmp(argv[1], "--json") != 0))
			ctl_usage();
		rc = qr_list(&sp, argc == 2);
	} else if (strcmp(sub, "show") == 0) {
		int dfd = openat(sp.fd[SD_QUARANTINE], argv[1],
		                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd < 0) {
			fprintf(stderr, "spoolctl: %s is not in quarantine\n", argv[1]);
			rc = 1;
		} else {
			qr_print_file(dfd, ENTRY_REPORT);
			printf("\nTrace:\n");
			qr_print_file(dfd, ENTRY_TRACE);
			close(dfd);
		}
	} else if (strcmp(sub, "release") == 0) {
		qr_claim(&sp, argv[1], &e);
		int unscanned = qr_has_unscanned(e.fd);
		static const char marker[] = "released by spoolctl\n";
		/* The marker is durable before the rename: a router that finds the entry in
		 * route/ always knows it was released, even after a crash. */
		trace_add(e.fd, e.qid, "release requested uid=%ld", (long)log_caller());
		qr_export(c, &e, EXPORT_RELEASED);
		if (spool_entry_write(&e, ENTRY_RELEASE, marker, sizeof marker - 1) < 0 ||
		    spool_entry_sync(&e) < 0)
			die_temp(e.qid, "cannot write %s/quarantine/%s/release: %s", sp.root, e.qid,
			         strerror(errno));
		if (spool_entry_move(&e, SD_ROUTE) < 0)
			die_temp(e.qid, "cannot move quarantine/%s to route/: %s", e.qid,
			         strerror(errno));
		log_audit(argv[1], "released from quarantine; the router delivers it");
		printf("%s released\n", argv[1]);
		if (unscanned)
			fprintf(
			    stderr,
			    "spoolctl: warning: %s has parts no scanner saw in full (\"Not scanned "
			    "in full\" in spoolctl quarantine show); they are delivered "
			    "unscanned\n",
			    argv[1]);
	} else if (strcmp(sub, "delete") == 0) {
		qr_claim(&sp, argv[1], &e);
		qr_export(c, &e, EXPORT_DELETED); /* synced by the trash move */
		if (spool_entry_trash(&e) < 0)
			die_temp(e.qid, "cannot delete quarantine/%s: %s", e.qid, strerror(errno));
		spool_entry_release(&e);
		log_audit(argv[1], "deleted from quarantine");
		printf("%s deleted\n", argv[1]);
	} else if (strcmp(sub, "expire") == 0) {
		if (argc != 1)
			ctl_usage();
		export_use(c);
		int n = spool_quarantine_expire(&sp, c->router.quarantine_days);
		if (n < 0)
			die_temp(NULL, "cannot list %s/quarantine: %s", sp.root, strerror(errno));
		printf("%d expired\n", n);
	} else {
		ctl_usage();
	}
	spool_close(&sp);
	return rc;
}
