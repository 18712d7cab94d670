// links:
/*
 * test_export - unit test of the fleet's event records (lib/export.c): the seq of each
 * transition kind and hold round, record names, and the record parser, as tables.
 *
 * What they promise: every transition of one round has its own seq, a later hold round
 * never reuses an earlier round's, delivered and bounced differ per connector; a record
 * name is exactly <qid>.<seq>; the parser takes a whole record and refuses one without
 * its first or last line, its seq, its kind, its node or a well-formed time.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "export.h"

static void test_seq(void)
{
	static const int kinds[] = {EXPORT_INTAKE,     EXPORT_SCANNED,   EXPORT_OUTBOX,
	                            EXPORT_QUARANTINE, EXPORT_HOLD,      EXPORT_BADMAIL,
	                            EXPORT_DISCARD,    EXPORT_RELEASED,  EXPORT_DELETED,
	                            EXPORT_EXPIRED,    EXPORT_DELIVERED, EXPORT_BOUNCED};
	int64_t seen[3 * 12 * 3];
	size_t n = 0;
	int dup = 0;
	for (unsigned round = 0; round < 3; round++)
		for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
			for (int conn = 0; conn < 3; conn++) {
				int64_t s = export_seq(kinds[k], round, conn);
				if (conn > 0 && kinds[k] != EXPORT_DELIVERED &&
				    kinds[k] != EXPORT_BOUNCED)
					continue;
				for (size_t i = 0; i < n; i++)
					dup |= seen[i] == s;
				seen[n++] = s;
			}
	CHECK("seq/unique per kind, round and connector", !dup);
	CHECK("seq/intake round 0 is 1", export_seq(EXPORT_INTAKE, 0, 0) == 1);
	CHECK("seq/scanned round 1 is 102", export_seq(EXPORT_SCANNED, 1, 0) == 102);
	CHECK("seq/connector past the last shares it",
	      export_seq(EXPORT_DELIVERED, 0, 500) == export_seq(EXPORT_DELIVERED, 0, 39));
	CHECK("seq/bounced past every delivered",
	      export_seq(EXPORT_BOUNCED, 0, 0) > export_seq(EXPORT_DELIVERED, 0, 39));
	CHECK("state/names round-trip",
	      export_state_kind(export_kind_state(EXPORT_QUARANTINE)) == EXPORT_QUARANTINE &&
	          export_state_kind("nonsense") == -1);
}

static void test_names(void)
{
	static const struct {
		const char *name, *input;
		int want;
	} rows[] = {
	    {"plain", "06618d610d7b73-007d06-0000.4", 1},
	    {"round", "06618d610d7b73-007d06-0000.205", 1},
	    {"no seq", "06618d610d7b73-007d06-0000.", 0},
	    {"no dot", "06618d610d7b73-007d06-0000", 0},
	    {"bad qid", "06618d610d7b73-007d06-000g.4", 0},
	    {"tmp", ".06618d610d7b73-007d06-0000.4.123.tmp", 0},
	    {"junk seq", "06618d610d7b73-007d06-0000.4x", 0},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		char qid[SPOOL_QID_LEN + 1];
		int64_t seq = -1;
		CHECK_ROW("name", rows[i].name,
		          export_name_parse(rows[i].input, qid, &seq) == rows[i].want);
	}
}

#define HEAD "spoold-event 1\nnode n1\nqid 06618d610d7b73-007d06-0000\n"
static void test_parse(void)
{
	static const struct {
		const char *name, *input;
		int want;
	} rows[] = {
	    {"whole",
	     HEAD "seq 1\nkind intake\ntime 1733040000.123456\nrcpt a@b\nrcpt c@d\n"
	          "subject hi\\x0a there\nend\n",
	     0},
	    {"seconds only", HEAD "seq 2\nkind scanned\ntime 1733040000\nclass clean\nend\n", 0},
	    {"no end", HEAD "seq 1\nkind intake\ntime 1\n", -1},
	    {"bytes after end", HEAD "seq 1\nkind intake\ntime 1\nend\nx\n", -1},
	    {"no magic", "node n1\nseq 1\nkind intake\ntime 1\nend\n", -1},
	    {"no seq", HEAD "kind intake\ntime 1\nend\n", -1},
	    {"unknown kind", HEAD "seq 1\nkind teleported\ntime 1\nend\n", -1},
	    {"bad time", HEAD "seq 1\nkind intake\ntime 1.5\nend\n", -1},
	    {"no node",
	     "spoold-event 1\nqid 06618d610d7b73-007d06-0000\nseq 1\nkind intake\n"
	     "time 1\nend\n",
	     -1},
	    {"no space", HEAD "seq 1\nkind intake\ntime 1\ngarbage\nend\n", -1},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		struct export_record r;
		int got = export_record_parse(rows[i].input, strlen(rows[i].input), &r);
		CHECK_ROW("parse", rows[i].name, got == rows[i].want);
		if (got == 0 && i == 0) {
			CHECK("parse/fields", r.seq == 1 && r.kind == EXPORT_INTAKE &&
			                          r.time_us == 1733040000123456LL &&
			                          strcmp(r.rcpts, "a@b\nc@d") == 0 &&
			                          strcmp(r.subject, "hi\\x0a there") == 0 &&
			                          strcmp(r.node, "n1") == 0);
		}
		if (got == 0)
			export_record_free(&r);
	}
}

int main(void)
{
	test_seq();
	test_names();
	test_parse();
	return failures ? 1 : 0;
}
