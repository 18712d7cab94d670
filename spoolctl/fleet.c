/*
 * spoolctl fleet - the fleet's database (docs/FLEET.md):
 *   fleet init                      create or upgrade the schema, its indexes, roles, RLS
 *   fleet node NAME ROLE            register a node and the PostgreSQL role it logs in as
 *   fleet search [--from A] [--to A] [--subject S] [--qid Q] [--message-id M]
 *                [--state S] [--since N[smhd]] [--node N] [--limit N] [--json]
 *   fleet release|delete QID [--node N] [--wait SECONDS]
 *   fleet expire [--days N]         retention: batched deletes of rows older than N days
 *
 * It connects with fleet.admin_conninfo (else fleet.conninfo), PGSERVICEFILE from
 * fleet.service_file: the password is in a passfile or service file, never in argv.
 * Release and delete never touch this node's spool: they queue an action row that the
 * owning node's exporter carries out (exporter/exporter.c). A queue ID no node reported
 * is queued as failed at once, with the reason.
 *
 * Exit: 0; 1 an action failed or nothing was found by --wait's end; 64 usage; 75 the
 * database cannot be reached; 78 no fleet configured.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "ctl.h"
#include "fleet_schema.h"
#include "log.h"
#include "spool.h"
#include "util.h"

static PGconn *fl_connect(const struct conf *c)
{
	if (!c->fleet.enabled)
		die_perm(EXIT_CONFIG, "no fleet group in %s (docs/FLEET.md)", c->path);
	const char *ci = c->fleet.admin_conninfo[0] ? c->fleet.admin_conninfo : c->fleet.conninfo;
	if (c->fleet.service_file[0])
		setenv("PGSERVICEFILE", c->fleet.service_file, 1);
	PGconn *db = PQconnectdb(ci);
	if (PQstatus(db) != CONNECTION_OK)
		die_temp(NULL, "cannot connect to the fleet database: %s", PQerrorMessage(db));
	return db;
}

static PGresult *fl_query(PGconn *db, const char *sql, int n, const char *const *p)
{
	PGresult *r = PQexecParams(db, sql, n, NULL, p, NULL, NULL, 0);
	ExecStatusType s = PQresultStatus(r);
	if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK)
		die_temp(NULL, "fleet database: %s", PQresultErrorMessage(r));
	return r;
}

static int fl_init(PGconn *db)
{
	struct buf b;
	buf_init(&b);
	/* One transaction: a failed upgrade leaves the schema as it was. */
	buf_printf(&b,
	           "BEGIN;\n%s\nINSERT INTO spoold.schema_version (version) VALUES (%d);\n"
	           "COMMIT;\n",
	           fleet_schema_sql, FLEET_SCHEMA_VERSION);
	PGresult *r = PQexec(db, buf_cstr(&b));
	buf_free(&b);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_temp(NULL, "fleet init: %s", PQresultErrorMessage(r));
	PQclear(r);
	printf("fleet schema version %d in place\n", FLEET_SCHEMA_VERSION);
	return 0;
}

static int fl_node(PGconn *db, const char *node, const char *role)
{
	const char *p[] = {node, role};
	PQclear(fl_query(db,
	                 "INSERT INTO spoold.nodes (node, role) VALUES ($1, $2) "
	                 "ON CONFLICT (node) DO UPDATE SET role = excluded.role",
	                 2, p));
	char *id = PQescapeIdentifier(db, role, strlen(role));
	if (id == NULL)
		die_temp(NULL, "fleet node: %s", PQerrorMessage(db));
	char *sql = xasprintf("GRANT spoold_node TO %s", id);
	PQfreemem(id);
	PQclear(fl_query(db, sql, 0, NULL));
	free(sql);
	printf("node %s logs in as role %s\n", node, role);
	return 0;
}

static void fl_json_str(const char *s)
{
	struct buf b;
	buf_init(&b);
	json_escape(&b, s, strlen(s));
	printf("\"%s\"", buf_cstr(&b));
	buf_free(&b);
}

/* "90s", "15m", "2h", "7d" or plain seconds. */
static long fl_seconds(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	long mult = *end == 'm' ? 60 : *end == 'h' ? 3600 : *end == 'd' ? 86400 : 1;
	if (v < 0 || end == s || (*end && (end[1] != '\0' || !strchr("smhd", *end))))
		ctl_usage();
	return v * mult;
}

/* A database value for the terminal: any node's role wrote it, so no byte of it may be a
 * control sequence (text_escape: printable ASCII, the rest \xHH). Static buffers, one per
 * slot of a printf. */
static const char *fl_text(const char *s, int slot)
{
	static struct buf b[7];
	buf_reset(&b[slot]);
	text_escape(&b[slot], s, strlen(s), 2048);
	return buf_cstr(&b[slot]);
}

static void fl_trail(PGconn *db, const char *node, const char *qid, int json)
{
	const char *p[] = {node, qid};
	PGresult *r = fl_query(db,
	                       "SELECT to_char(at, 'YYYY-MM-DD HH24:MI:SS'), kind, "
	                       "coalesce(conn, ''), coalesce(detail, ''), seq FROM spoold.events "
	                       "WHERE node = $1 AND qid = $2 ORDER BY at, seq",
	                       2, p);
	for (int i = 0; i < PQntuples(r); i++) {
		if (json) {
			printf("%s{\"at\":", i ? "," : "");
			fl_json_str(PQgetvalue(r, i, 0));
			printf(",\"event\":");
			fl_json_str(PQgetvalue(r, i, 1));
			printf(",\"conn\":");
			fl_json_str(PQgetvalue(r, i, 2));
			printf(",\"detail\":");
			fl_json_str(PQgetvalue(r, i, 3));
			printf(",\"seq\":%s}", PQgetvalue(r, i, 4));
		} else {
			printf("    %s %-10s %s %s\n", fl_text(PQgetvalue(r, i, 0), 0),
			       fl_text(PQgetvalue(r, i, 1), 1), fl_text(PQgetvalue(r, i, 2), 2),
			       fl_text(PQgetvalue(r, i, 3), 3));
		}
	}
	PQclear(r);
}

static void fl_print(PGconn *db, PGresult *r, int json)
{
	static const char *const cols[] = {"node",       "qid",       "state",      "class",
	                                   "sender",     "subject",   "message_id", "size",
	                                   "first_seen", "recipients"};
	if (json)
		printf("[");
	for (int i = 0; i < PQntuples(r); i++) {
		if (json) {
			printf("%s{", i ? "," : "");
			for (int k = 0; k < (int)ARRAY_LEN(cols); k++) {
				printf("%s\"%s\":", k ? "," : "", cols[k]);
				fl_json_str(PQgetvalue(r, i, k));
			}
			printf(",\"trail\":[");
			fl_trail(db, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), 1);
			printf("]}");
		} else {
			printf("%s %s %-10s %-11s from %s to %s subject \"%s\"\n",
			       fl_text(PQgetvalue(r, i, 0), 0), fl_text(PQgetvalue(r, i, 1), 1),
			       fl_text(PQgetvalue(r, i, 2), 2), fl_text(PQgetvalue(r, i, 3), 3),
			       fl_text(PQgetvalue(r, i, 4), 4), fl_text(PQgetvalue(r, i, 9), 5),
			       fl_text(PQgetvalue(r, i, 5), 6));
			fl_trail(db, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), 0);
		}
	}
	if (json)
		printf("]\n");
}

static int fl_search(PGconn *db, int argc, char **argv)
{
	/* option -> condition on m (messages); $N is the option's value. */
	static const struct {
		const char *opt, *cond;
	} keys[] = {
	    {"--from", "lower(m.sender) = lower($%d)"},
	    {"--to", "EXISTS (SELECT 1 FROM spoold.recipients r WHERE r.node = m.node AND "
	             "r.qid = m.qid AND lower(r.rcpt) = lower($%d))"},
	    {"--subject", "m.subject ILIKE '%%' || $%d || '%%'"},
	    {"--qid", "m.qid = $%d"},
	    {"--message-id", "(m.message_id = $%d OR m.message_id = '<' || $%d || '>')"},
	    {"--state", "m.state = $%d"},
	    {"--node", "m.node = $%d"},
	    {"--since", "m.last_seen >= now() - make_interval(secs => $%d::bigint)"},
	};
	const char *vals[16];
	char since[32], limit[16] = "1000";
	int n = 0, json = 0;
	struct buf q;
	buf_init(&q);
	buf_addstr(&q, "SELECT m.node, m.qid, coalesce(m.state, ''), coalesce(m.class, ''), "
	               "coalesce(m.sender, ''), coalesce(m.subject, ''), "
	               "coalesce(m.message_id, ''), coalesce(m.size::text, ''), "
	               "coalesce(to_char(m.first_seen, 'YYYY-MM-DD HH24:MI:SS'), ''), "
	               "coalesce((SELECT string_agg(r.rcpt, ',' ORDER BY r.rcpt) FROM "
	               "spoold.recipients r WHERE r.node = m.node AND r.qid = m.qid), '') "
	               "FROM spoold.messages m WHERE true");
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0) {
			json = 1;
			continue;
		}
		if (i + 1 >= argc || n >= (int)ARRAY_LEN(vals))
			ctl_usage();
		if (strcmp(argv[i], "--limit") == 0) {
			snprintf(limit, sizeof limit, "%ld", fl_seconds(argv[++i]));
			continue;
		}
		size_t k = 0;
		while (k < ARRAY_LEN(keys) && strcmp(argv[i], keys[k].opt) != 0)
			k++;
		if (k == ARRAY_LEN(keys))
			ctl_usage();
		const char *v = argv[++i];
		if (strcmp(keys[k].opt, "--since") == 0) {
			snprintf(since, sizeof since, "%ld", fl_seconds(v));
			v = since;
		}
		vals[n++] = v;
		buf_addstr(&q, " AND ");
		buf_printf(&q, keys[k].cond, n, n);
	}
	buf_printf(&q, " ORDER BY m.first_seen, m.node, m.qid LIMIT %s", limit);
	PGresult *r = fl_query(db, buf_cstr(&q), n, vals);
	fl_print(db, r, json);
	int found = PQntuples(r);
	PQclear(r);
	buf_free(&q);
	return found > 0 ? 0 : 1;
}

/* Queue a release or delete for the node that holds qid; with wait, until it is done. */
static int fl_action(PGconn *db, const char *action, int argc, char **argv)
{
	const char *qid = argv[0], *node = NULL;
	long wait = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--node") == 0 && i + 1 < argc)
			node = argv[++i];
		else if (strcmp(argv[i], "--wait") == 0 && i + 1 < argc)
			wait = fl_seconds(argv[++i]);
		else
			ctl_usage();
	}
	const char *p[] = {qid, node ? node : ""};
	PGresult *r = fl_query(db,
	                       "SELECT node FROM spoold.messages WHERE qid = $1 AND "
	                       "($2 = '' OR node = $2) ORDER BY last_seen DESC",
	                       2, p);
	int known = PQntuples(r) > 0;
	char owner[128];
	snprintf(owner, sizeof owner, "%s", known ? PQgetvalue(r, 0, 0) : node ? node : "-");
	if (PQntuples(r) > 1 && node == NULL) {
		PQclear(r);
		die_perm(EXIT_USAGE, "%s is known on more than one node: name it with --node", qid);
	}
	PQclear(r);
	/* An unknown message has no node to carry it out: the action is recorded as failed,
	 * with why, so the request and its answer stay in the audit trail. */
	const char *q[] = {owner, qid, action, known ? "pending" : "failed",
	                   known ? NULL : "unknown message: no node reported this queue ID"};
	r = fl_query(db,
	             "INSERT INTO spoold.actions (node, qid, action, status, result, done_at) "
	             "VALUES ($1, $2, $3, $4, $5, CASE WHEN $4 = 'failed' THEN now() END) "
	             "RETURNING id",
	             5, q);
	char id[32];
	snprintf(id, sizeof id, "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	printf("action %s: %s %s on node %s %s\n", id, action, qid, fl_text(owner, 0),
	       known ? "queued" : "failed: unknown message");
	if (!known)
		return 1;
	time_t until = time(NULL) + wait;
	const char *ip[] = {id};
	while (wait > 0) {
		r = fl_query(
		    db, "SELECT status, coalesce(result, '') FROM spoold.actions WHERE id = $1", 1,
		    ip);
		const char *st = PQntuples(r) ? PQgetvalue(r, 0, 0) : "gone";
		if (strcmp(st, "done") == 0 || strcmp(st, "failed") == 0) {
			printf("action %s: %s: %s\n", id, st, fl_text(PQgetvalue(r, 0, 1), 0));
			int rc = strcmp(st, "done") == 0 ? 0 : 1;
			PQclear(r);
			return rc;
		}
		PQclear(r);
		if (time(NULL) >= until) {
			printf("action %s: still %s after %ld s\n", id, st, wait);
			return 1;
		}
		usleep(100000);
	}
	return 0;
}

/* Retention: rows older than days go, in batches of 10,000 so that no one transaction
 * locks the tables for long or grows the WAL without bound. */
static int fl_expire(PGconn *db, int days)
{
	static const char *const del[] = {
	    "DELETE FROM spoold.events WHERE ctid IN (SELECT ctid FROM spoold.events WHERE "
	    "at < now() - make_interval(days => $1::int) LIMIT 10000)",
	    "DELETE FROM spoold.recipients WHERE ctid IN (SELECT r.ctid FROM spoold.recipients r "
	    "JOIN spoold.messages m USING (node, qid) WHERE m.last_seen < now() - "
	    "make_interval(days => $1::int) LIMIT 10000)",
	    "DELETE FROM spoold.messages WHERE ctid IN (SELECT ctid FROM spoold.messages WHERE "
	    "last_seen < now() - make_interval(days => $1::int) LIMIT 10000)",
	    "DELETE FROM spoold.actions WHERE ctid IN (SELECT ctid FROM spoold.actions WHERE "
	    "status IN ('done', 'failed') AND done_at < now() - make_interval(days => $1::int) "
	    "LIMIT 10000)",
	};
	static const char *const names[] = {"events", "recipients", "messages", "actions"};
	char d[16];
	snprintf(d, sizeof d, "%d", days);
	const char *p[] = {d};
	for (size_t i = 0; i < ARRAY_LEN(del); i++) {
		long total = 0, n;
		do {
			PGresult *r = fl_query(db, del[i], 1, p);
			n = strtol(PQcmdTuples(r), NULL, 10);
			total += n;
			PQclear(r);
		} while (n > 0);
		printf("%s: %ld removed\n", names[i], total);
	}
	return 0;
}

int ctl_cmd_fleet(struct conf *c, int argc, char **argv)
{
	if (argc < 1)
		ctl_usage();
	const char *sub = argv[0];
	int rc;
	if (strcmp(sub, "init") == 0 && argc == 1) {
		PGconn *db = fl_connect(c);
		rc = fl_init(db);
		PQfinish(db);
	} else if (strcmp(sub, "node") == 0 && argc == 3) {
		PGconn *db = fl_connect(c);
		rc = fl_node(db, argv[1], argv[2]);
		PQfinish(db);
	} else if (strcmp(sub, "search") == 0) {
		PGconn *db = fl_connect(c);
		rc = fl_search(db, argc - 1, argv + 1);
		PQfinish(db);
	} else if ((strcmp(sub, "release") == 0 || strcmp(sub, "delete") == 0) && argc >= 2) {
		if (!spool_qid_valid(argv[1]))
			die_perm(EXIT_USAGE, "'%s' is not a queue ID", argv[1]);
		PGconn *db = fl_connect(c);
		rc = fl_action(db, sub, argc - 1, argv + 1);
		PQfinish(db);
	} else if (strcmp(sub, "expire") == 0) {
		int days = c->fleet.retention_days;
		if (argc == 3 && strcmp(argv[1], "--days") == 0)
			days = (int)(fl_seconds(argv[2]));
		else if (argc != 1)
			ctl_usage();
		if (days <= 0) {
			printf("fleet.retention_days is 0: nothing expires\n");
			return 0;
		}
		PGconn *db = fl_connect(c);
		rc = fl_expire(db, days);
		PQfinish(db);
	} else {
		ctl_usage();
	}
	return rc;
}
