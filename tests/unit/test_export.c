// links:
/*
 * test_export - unit test of the fleet's event records (lib/export.c): the seq of each
 * transition kind and hold round, the key of a record written for a work directory (its
 * pass and hold round) and for an outbox entry the router prepared from it, record names,
 * and the record parser, as tables.
 *
 * What they promise: every transition of one round has its own seq, a later hold round
 * never reuses an earlier round's, delivered and bounced differ per connector; a record
 * written for a directory is keyed pass * 100,000,000 + hold round * 100 + kind (+ the
 * connector's index), the pass read from its `requeues`, the hold round from its `hold`;
 * an outbox entry carries its work directory's pass (export_pass_copy), so a connector's
 * record after a requeue is keyed in that pass, not in pass 0; a record name is exactly
 * <qid>.<seq>; the parser takes a whole record and refuses one without its first or last
 * line, its seq, its kind, its node or a well-formed time.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "export.h"
#include "fileio.h"

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

/* A spool root with export/, and a fleet config of two connectors, for export_event. */
#define QID "06618d610d7b73-007d06-0000"
static char root_path[] = "/tmp/spoold-test-export-XXXXXX";
static struct spool sp = {.root_fd = -1};
static int export_fd = -1;
static struct conf_connector conns[2] = {{.name = "a"}, {.name = "b"}};
static struct conf fleet_conf = {
    .fleet = {.enabled = 1, .node = "n1", .max_backlog = 1000},
    .connectors = conns,
    .n_connectors = 2,
};

static int setup_root(void)
{
	if (mkdtemp(root_path) == NULL)
		return -1;
	sp.root = root_path;
	sp.root_fd = open(root_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp.root_fd < 0 || mkdirat(sp.root_fd, "export", 0700) < 0)
		return -1;
	export_fd = openat(sp.root_fd, "export", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return export_fd < 0 ? -1 : 0;
}

/* A fresh directory name under the root, with `requeues` and `hold` as given (NULL:
 * absent). Its descriptor, or -1. */
static int make_dir(int parent, const char *name, const char *requeues, const char *hold)
{
	if (remove_tree_at(parent, name) < 0 || mkdirat(parent, name, 0700) < 0)
		return -1;
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if ((requeues &&
	     write_file_replace(fd, "requeues", requeues, strlen(requeues), 0600) < 0) ||
	    (hold && write_file_replace(fd, "hold", hold, strlen(hold), 0600) < 0)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Write the record of kind for dirfd; 1 if export/ then holds exactly the one record
 * QID.want (removed again for the next row), else 0 with what it holds printed. */
static int record_is(int dirfd, int kind, const char *conn, long long want)
{
	if (export_event(&fleet_conf, &sp, dirfd, QID, kind, conn, NULL, 0) != 1)
		return 0;
	char name[64];
	snprintf(name, sizeof name, "%s.%lld", QID, want);
	long n = export_backlog(export_fd, NULL);
	int ok = n == 1 && faccessat(export_fd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
	if (!ok)
		printf("  export/ holds %ld records, want only %s\n", n, name);
	/* Every record goes (export/ itself stays: export_event keeps it open), so the next
	 * row sees only its own. */
	int fd = openat(export_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (d == NULL)
		return 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
		    unlinkat(export_fd, de->d_name, 0) < 0)
			ok = 0;
	closedir(d);
	return ok;
}

#define HOLD(n) "hold attempts=" #n " first=1733040000 next=1733043600\n"

/* The key of a record written for a work directory: pass from `requeues`, hold round from
 * `hold`, the formula of export_seq. */
static void test_key(void)
{
	static const struct {
		const char *name, *requeues, *hold;
		int kind;
		const char *conn;
		long long want;
	} rows[] = {
	    {"pass 0 intake", NULL, NULL, EXPORT_INTAKE, NULL, 1},
	    {"pass 0 scanned after 2 holds", NULL, HOLD(2), EXPORT_SCANNED, NULL, 202},
	    {"pass 1 intake", "1\n", NULL, EXPORT_INTAKE, NULL, 100000001},
	    {"pass 3 held once", "3\n", HOLD(1), EXPORT_HOLD, NULL, 300000105},
	    {"pass 2 delivered by b", "2\n", NULL, EXPORT_DELIVERED, "b", 200000021},
	    {"pass 2 bounced by a", "2\n", NULL, EXPORT_BOUNCED, "a", 200000060},
	    {"hold rounds stop at 100000", "1\n", HOLD(7777777), EXPORT_HOLD, NULL, 110000005},
	    {"junk requeues is pass 0", "x\n", NULL, EXPORT_INTAKE, NULL, 1},
	    {"passes stop at 1e9", "99999999999\n", NULL, EXPORT_INTAKE, NULL,
	     100000000000000001LL},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		int fd = make_dir(sp.root_fd, "entry", rows[i].requeues, rows[i].hold);
		CHECK_ROW("key", rows[i].name,
		          fd >= 0 && record_is(fd, rows[i].kind, rows[i].conn, rows[i].want));
		if (fd >= 0)
			close(fd);
	}
}

/* The connector's record of an outbox entry the router prepared (out.<conn>/, with the
 * pass export_pass_copy carried over): keyed in the work directory's pass, hold round 0
 * (the outbox has no `hold`: one delivery per pass); so a message a connector bounced,
 * requeued and delivered or bounced again has keys apart from its first pass's. */
static void test_outbox_key(void)
{
	static const struct {
		const char *name, *requeues, *hold;
		int kind;
		const char *conn;
		long long want;
		const char *copied; /* the outbox entry's `requeues`; NULL: none */
	} rows[] = {
	    {"never requeued: pass 0", NULL, NULL, EXPORT_DELIVERED, "a", 20, NULL},
	    {"never requeued, held: pass 0", NULL, HOLD(4), EXPORT_BOUNCED, "b", 61, NULL},
	    {"requeued once: pass 1", "1\n", NULL, EXPORT_DELIVERED, "a", 100000020, "1\n"},
	    {"requeued once, held: pass 1, round 0", "1\n", HOLD(3), EXPORT_BOUNCED, "b", 100000061,
	     "1\n"},
	    {"bounced again after 2 requeues: pass 2", "2\n", NULL, EXPORT_BOUNCED, "a", 200000060,
	     "2\n"},
	    {"junk requeues: pass 0, no copy", "0x7\n", NULL, EXPORT_DELIVERED, "a", 20, NULL},
	    {"count written clean", "05 \n", NULL, EXPORT_DELIVERED, "b", 500000021, "5\n"},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		int wfd = make_dir(sp.root_fd, "route", rows[i].requeues, rows[i].hold);
		int ofd = wfd < 0 ? -1 : make_dir(wfd, "out.tmp", NULL, NULL);
		int ok = ofd >= 0 && export_pass_copy(wfd, ofd) == 0;
		struct buf b;
		buf_init(&b);
		int have = ok && read_file_at(ofd, "requeues", &b, 64) == 0;
		if (rows[i].copied)
			ok = ok && have && check_bytes_are(b.data, b.len, rows[i].copied);
		else
			ok = ok && !have;
		buf_free(&b);
		CHECK_ROW("outbox key", rows[i].name,
		          ok && record_is(ofd, rows[i].kind, rows[i].conn, rows[i].want));
		if (ofd >= 0)
			close(ofd);
		if (wfd >= 0)
			close(wfd);
	}
}

int main(void)
{
	test_seq();
	test_names();
	test_parse();
	if (setup_root() < 0) {
		perror(root_path);
		return 2;
	}
	test_key();
	test_outbox_key();
	remove_tree_at(AT_FDCWD, root_path);
	return failures ? 1 : 0;
}
