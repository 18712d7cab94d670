// links: scanner-runner/clamd.c scanner-runner/clamd_session.c
/*
 * test_clamd - unit test of scanner-runner/clamd.c, against a real clamd and against
 * fake servers forked here.
 *
 *   test_clamd unix:/path/to/clamd.sock tcp:127.0.0.1:PORT
 *
 * Both addresses must reach a clamd (the same one is fine) that
 *   - detects the 68-byte EICAR test file, under the name $TEST_CLAMD_EICAR_NAME
 *     (default "eicar.com.UNOFFICIAL", what `sigtool --md5 eicar.com > t.hdb` gives;
 *     with conf/mksigs.sh it is "Spoold.Test.EICAR.NDB.UNOFFICIAL");
 *   - has StreamMaxLength $TEST_CLAMD_STREAM_MAX bytes (default 1048576, i.e. "1M").
 *
 * Prints one line per check on stdout, "PASS name" or "FAIL name: why", and exits 1 if
 * any check failed (2 on a usage or setup error).
 *
 * SIGPIPE is set to its default on purpose: a send without MSG_NOSIGNAL kills this
 * process, so the run fails loudly instead of passing by accident.
 *
 * Build (from the top of the tree) and run against a private clamd:
 *
 *   gcc -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -O2 -Ilib -Iscanner-runner \
 *       -o test_clamd tests/unit/test_clamd.c scanner-runner/clamd*.c lib/alloc.c lib/buf.c \
 *       lib/clock.c lib/escape.c lib/fileio.c lib/strconv.c lib/log.c
 *   T=$(mktemp -d) && mkdir $T/db   # then put eicar.com in $T, and:
 *   sigtool --md5 $T/eicar.com > $T/db/t.hdb
 *   clamd.conf:  Foreground yes / LocalSocket $T/clamd.sock / TCPSocket PORT /
 *                TCPAddr 127.0.0.1 / DatabaseDirectory $T/db / TemporaryDirectory $T /
 *                StreamMaxLength 1M / LogFile $T/clamd.log / PidFile $T/clamd.pid
 *   /usr/sbin/clamd -c $T/clamd.conf &     # as root, without User: it stays root
 *   ./test_clamd unix:$T/clamd.sock tcp:127.0.0.1:PORT
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clamd.h"

#define OK_MS     5000         /* timeout for exchanges that should succeed */
#define SHORT_MS  600          /* timeout for exchanges that should time out */
#define EARLY_MS  20           /* a timeout may come back this much early (clock rounding) */
#define LATE_MS   400          /* and this much late (scheduling) */
#define HUGE_SIZE (64LL << 20) /* more than loopback socket buffers ever hold */

static int failures;
static char tmpdir[128];

/* The policy of every session and ping here: the test's StreamMaxLength, no size limit of
 * ours, and a clamd of our own uid or root (set in main). */
static struct clamd_policy pol_main;

/* pol_main with another stream_max, for one call (clamd_scan_fd keeps no pointer). */
static const struct clamd_policy *pol(uint64_t stream_max)
{
	static struct clamd_policy p;

	p = pol_main;
	p.stream_max = stream_max;
	return &p;
}

static void pass(const char *name)
{
	printf("PASS %s\n", name);
	fflush(stdout);
}

static void fail(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(const char *name, const char *fmt, ...)
{
	va_list ap;

	printf("FAIL %s: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	failures++;
}

static void check(const char *name, int ok, const char *why)
{
	if (ok)
		pass(name);
	else
		fail(name, "%s", why);
}

static const char *vname(enum verdict v)
{
	switch (v) {
	case V_CLEAN:
		return "clean";
	case V_INFECTED:
		return "infected";
	case V_ERROR:
		return "error";
	case V_UNSCANNABLE:
		return "unscannable";
	}
	return "?";
}

static int64_t now_ms(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0) {
		perror("clock_gettime");
		exit(2);
	}
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die_setup(const char *what)
{
	fprintf(stderr, "test_clamd: setup: %s: %s\n", what, strerror(errno));
	exit(2);
}

/*
 * Compare an outcome with what is wanted. want_virus: exact, NULL for any. want_reply:
 * a prefix of r->reply, NULL for any. Returns 1 if it matched.
 */
static int expect(const char *name, int rc, const struct clamd_result *r, int want_rc,
                  enum verdict want_v, const char *want_virus, const char *want_reply)
{
	if (rc == want_rc && r->verdict == want_v &&
	    (want_virus == NULL || strcmp(r->virus, want_virus) == 0) &&
	    (want_reply == NULL || strncmp(r->reply, want_reply, strlen(want_reply)) == 0)) {
		pass(name);
		return 1;
	}
	fail(name,
	     "got rc=%d verdict=%s virus='%s' reply='%s' addr='%s'; want rc=%d verdict=%s%s%s%s%s",
	     rc, vname(r->verdict), r->virus, r->reply, r->addr, want_rc, vname(want_v),
	     want_virus ? " virus=" : "", want_virus ? want_virus : "",
	     want_reply ? " reply^=" : "", want_reply ? want_reply : "");
	return 0;
}

/* Like expect, and the call must have come back within [want_ms - EARLY, want_ms + LATE]
 * (want_ms < 0: merely before the OK_MS timeout ran out, i.e. not by timing out). */
static void expect_timed(const char *name, int64_t ms, int rc, const struct clamd_result *r,
                         int want_rc, enum verdict want_v, const char *want_reply, int64_t want_ms)
{
	if (want_ms >= 0 && (ms < want_ms - EARLY_MS || ms > want_ms + LATE_MS)) {
		fail(name, "came back after %lld ms, want %lld ms (reply '%s')", (long long)ms,
		     (long long)want_ms, r->reply);
		return;
	}
	if (want_ms < 0 && ms >= OK_MS - EARLY_MS) {
		fail(name, "came back after %lld ms: it waited for the timeout (reply '%s')",
		     (long long)ms, r->reply);
		return;
	}
	expect(name, rc, r, want_rc, want_v, NULL, want_reply);
}

/* Open descriptors of this process, to catch leaks. */
static int fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		die_setup("opendir /proc/self/fd");
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory stream's own descriptor */
}

/* Create tmpdir/name holding data, then extended (sparse, zeros) to size if size > n;
 * returns a fresh O_RDONLY descriptor, as the runner would hold. */
/* A fresh read-only descriptor of a file file_make made (a session hands it to clamd). */
static int file_ro(const char *name)
{
	char path[256];
	int fd;

	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die_setup(path);
	return fd;
}

static int file_make(const char *name, const void *data, size_t n, off_t size)
{
	char path[256];
	int fd;

	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		die_setup(path);
	if (n > 0 && write(fd, data, n) != (ssize_t)n)
		die_setup(path);
	if (size > (off_t)n && ftruncate(fd, size) < 0)
		die_setup(path);
	if (close(fd) < 0)
		die_setup(path);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die_setup(path);
	return fd;
}

/* ---- fake servers ---- */

enum fake_kind {
	FAKE_SILENT,  /* accepts, never reads, never answers */
	FAKE_CLOSER,  /* reads read_first bytes, then closes without a reply */
	FAKE_REPLIER, /* reads read_first bytes, sends reply, then half-closes (or not) */
	FAKE_COUNTER, /* reads to EOF, reports the byte count through a pipe */
	FAKE_BACKLOG, /* no child: listens with a full backlog, so connect() hangs */
};

struct fake {
	pid_t pid;
	int ls;     /* FAKE_BACKLOG: the listening socket, kept in this process */
	int filler; /* FAKE_BACKLOG: the connection that fills the backlog */
	int report; /* FAKE_COUNTER: read end of the child's pipe */
	char path[200];
	char addr[256];
};

struct fake_spec {
	enum fake_kind kind;
	size_t read_first;
	const char *reply;
	size_t reply_len;
	int keep_open; /* FAKE_REPLIER: keep the connection open after the reply */
};

static void fake_serve(int ls, const struct fake_spec *sp, int report)
{
	static char buf[65536];
	size_t got = 0;
	ssize_t k;
	int c;

	/* Never outlive the test, whatever kills it. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		_exit(3);
	c = accept(ls, NULL, NULL);
	if (c < 0)
		_exit(3);
	if (sp->kind == FAKE_SILENT)
		for (;;)
			pause();
	if (sp->kind == FAKE_COUNTER) {
		unsigned long long total = 0;

		while ((k = read(c, buf, sizeof buf)) > 0)
			total += (unsigned long long)k;
		if (write(report, &total, sizeof total) != (ssize_t)sizeof total)
			_exit(3);
		_exit(0);
	}
	while (got < sp->read_first) {
		size_t want = sp->read_first - got;

		k = read(c, buf, want < sizeof buf ? want : sizeof buf);
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	if (sp->kind == FAKE_CLOSER)
		_exit(0); /* closing with unread data: the client sees a reset */
	if (sp->reply_len > 0 && write(c, sp->reply, sp->reply_len) != (ssize_t)sp->reply_len)
		_exit(3);
	if (sp->keep_open)
		for (;;)
			pause();
	/* Half-close and drain, so the client reads our reply and then EOF, never a reset. */
	if (shutdown(c, SHUT_WR) < 0)
		_exit(3);
	while (read(c, buf, sizeof buf) > 0)
		;
	_exit(0);
}

static void fake_start(struct fake *f, int tcp, const struct fake_spec *sp)
{
	static int seq;
	int ls, p[2] = {-1, -1};

	memset(f, 0, sizeof *f);
	f->pid = -1;
	f->ls = f->filler = f->report = -1;
	ls = socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0)
		die_setup("socket");
	if (tcp) {
		struct sockaddr_in sin;
		socklen_t len = sizeof sin;

		memset(&sin, 0, sizeof sin);
		sin.sin_family = AF_INET;
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (bind(ls, (struct sockaddr *)&sin, sizeof sin) < 0 ||
		    getsockname(ls, (struct sockaddr *)&sin, &len) < 0)
			die_setup("bind tcp");
		snprintf(f->addr, sizeof f->addr, "tcp:127.0.0.1:%u", ntohs(sin.sin_port));
	} else {
		struct sockaddr_un sun;

		memset(&sun, 0, sizeof sun);
		sun.sun_family = AF_UNIX;
		if (snprintf(f->path, sizeof f->path, "%s/fake%d.sock", tmpdir, seq++) >=
		        (int)sizeof f->path ||
		    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", f->path) >=
		        (int)sizeof sun.sun_path) {
			errno = ENAMETOOLONG;
			die_setup("fake socket path");
		}
		if (bind(ls, (struct sockaddr *)&sun, sizeof sun) < 0)
			die_setup(f->path);
		snprintf(f->addr, sizeof f->addr, "unix:%s", f->path);
	}
	if (listen(ls, sp->kind == FAKE_BACKLOG ? 0 : 16) < 0)
		die_setup("listen");

	if (sp->kind == FAKE_BACKLOG) {
		/* With backlog 0, Linux queues one connection; the next one's SYN is dropped
		 * and its connect() stays in progress. */
		struct sockaddr_in sin;
		socklen_t len = sizeof sin;
		struct pollfd pfd;

		f->ls = ls;
		if (!tcp || getsockname(ls, (struct sockaddr *)&sin, &len) < 0)
			die_setup("backlog fake needs tcp");
		f->filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (f->filler < 0)
			die_setup("socket");
		if (connect(f->filler, (struct sockaddr *)&sin, len) < 0 && errno != EINPROGRESS)
			die_setup("connect filler");
		pfd.fd = f->filler;
		pfd.events = POLLOUT;
		if (poll(&pfd, 1, 2000) != 1)
			die_setup("filler connection did not complete");
		return;
	}
	if (sp->kind == FAKE_COUNTER && pipe2(p, O_CLOEXEC) < 0)
		die_setup("pipe2");
	fflush(stdout); /* the child must not print our buffered lines again */
	f->pid = fork();
	if (f->pid < 0)
		die_setup("fork");
	if (f->pid == 0)
		fake_serve(ls, sp, p[1]);
	close(ls);
	if (p[1] >= 0)
		close(p[1]);
	f->report = p[0];
}

/* FAKE_COUNTER: bytes the child received on its one connection, or -1 if it reported
 * nothing within wait_ms (no connection was made, or it is still open). */
static long long fake_count(struct fake *f, int wait_ms)
{
	struct pollfd pfd = {.fd = f->report, .events = POLLIN};
	unsigned long long total;

	if (poll(&pfd, 1, wait_ms) != 1)
		return -1;
	if (read(f->report, &total, sizeof total) != (ssize_t)sizeof total)
		return -1;
	return (long long)total;
}

static void fake_stop(struct fake *f)
{
	if (f->pid > 0) {
		kill(f->pid, SIGKILL);
		while (waitpid(f->pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (f->report >= 0)
		close(f->report);
	if (f->filler >= 0)
		close(f->filler);
	if (f->ls >= 0)
		close(f->ls);
	if (f->path[0] != '\0')
		unlink(f->path);
	f->pid = -1;
	f->report = f->filler = f->ls = -1;
}

/* ---- EINTR storm: SIGALRM every millisecond, without SA_RESTART ---- */

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

static void storm(int on)
{
	struct sigaction sa;
	struct itimerval it;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: every blocking call sees EINTR */
	if (sigaction(SIGALRM, &sa, NULL) < 0)
		die_setup("sigaction");
	memset(&it, 0, sizeof it);
	if (on) {
		it.it_interval.tv_usec = 1000;
		it.it_value.tv_usec = 1000;
	}
	if (setitimer(ITIMER_REAL, &it, NULL) < 0)
		die_setup("setitimer");
}

/* ---- checks ---- */

struct parse_case {
	const char *line;
	int rc;
	enum verdict v;
	const char *virus;
};

static void check_parse(void)
{
	static char longname[400];
	static const struct parse_case cases[] = {
	    {"stream: OK", 0, V_CLEAN, ""},
	    {"fd[12]: OK", 0, V_CLEAN, ""},
	    {"stream: eicar.com.UNOFFICIAL FOUND", 0, V_INFECTED, "eicar.com.UNOFFICIAL"},
	    {"fd[7]: Win.Test.EICAR_HDB-1 FOUND", 0, V_INFECTED, "Win.Test.EICAR_HDB-1"},
	    {"stream: Eicar-Signature(44d88612fea8a8f36de82e1278abb02f:68) FOUND", 0, V_INFECTED,
	     "Eicar-Signature(44d88612fea8a8f36de82e1278abb02f:68)"},
	    {"stream: Heuristics.Encrypted.Zip FOUND", 0, V_INFECTED, "Heuristics.Encrypted.Zip"},
	    {"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND", -1, V_UNSCANNABLE, ""},
	    {"fd[3]: Heuristics.Limits.Exceeded.MaxScanTime FOUND", -1, V_UNSCANNABLE, ""},
	    {"stream: Heuristics.Limits.Exceeded FOUND", -1, V_UNSCANNABLE, ""},
	    {"INSTREAM size limit exceeded. ERROR", -1, V_UNSCANNABLE, ""},
	    {"stream: Exceeded max scan size ERROR", -1, V_UNSCANNABLE, ""},
	    {"stream: Time limit reached ERROR", -1, V_UNSCANNABLE, ""},
	    {"No file descriptor received. ERROR", -1, V_ERROR, ""},
	    {"fd[12]: lstat() failed: No such file or directory. ERROR", -1, V_ERROR, ""},
	    {"PROTOCOL ERROR: ancillary data sent without FILDES. ERROR", -1, V_ERROR, ""},
	    {"stream: eicar FOUND ERROR", -1, V_ERROR, ""},
	    {"UNKNOWN COMMAND", -1, V_ERROR, ""},
	    {"COMMAND READ TIMED OUT", -1, V_ERROR, ""},
	    {"PONG", -1, V_ERROR, ""},
	    {"", -1, V_ERROR, ""},
	    {"OK", -1, V_ERROR, ""},
	    {"stream:OK", -1, V_ERROR, ""},
	    {"stream: OK ", -1, V_ERROR, ""},
	    {"stream: ok", -1, V_ERROR, ""},
	    {"stream: OKAY", -1, V_ERROR, ""},
	    {"stream: OK\n", -1, V_ERROR, ""},
	    {"/tmp/file: OK", -1, V_ERROR, ""},
	    {"/tmp/file: eicar FOUND", -1, V_ERROR, ""},
	    {"1: stream: OK", -1, V_ERROR, ""},
	    {"fd[]: OK", -1, V_ERROR, ""},
	    {"fd[x]: OK", -1, V_ERROR, ""},
	    {"fd[1] : OK", -1, V_ERROR, ""},
	    {"stream: FOUND", -1, V_ERROR, ""},
	    {"stream:  FOUND", -1, V_ERROR, ""},
	    {"stream: eicar\tFOUND", -1, V_ERROR, ""},
	    {"stream: eicar FOUND\r", -1, V_ERROR, ""},
	    {"stream: eicar found", -1, V_ERROR, ""},
	};
	struct clamd_result r;
	char name[64], line[450];
	size_t i;
	int rc, bad = 0;

	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		memset(&r, 0x55, sizeof r); /* garbage in, so stale fields would show */
		rc = clamd_reply_parse(cases[i].line, &r);
		snprintf(name, sizeof name, "parse_%zu", i);
		if (rc != cases[i].rc || r.verdict != cases[i].v ||
		    strcmp(r.virus, cases[i].virus) != 0 ||
		    (cases[i].line[0] != '\0' && strcmp(r.reply, cases[i].line) != 0)) {
			fail(name,
			     "'%s' gave rc=%d verdict=%s virus='%s' reply='%s'; want rc=%d %s '%s'",
			     cases[i].line, rc, vname(r.verdict), r.virus, r.reply, cases[i].rc,
			     vname(cases[i].v), cases[i].virus);
			bad++;
		}
	}
	if (bad == 0)
		pass("parse_table");

	/* A name longer than virus[] is cut, and still infected. */
	memset(longname, 'N', sizeof longname - 1);
	snprintf(line, sizeof line, "stream: %s FOUND", longname);
	rc = clamd_reply_parse(line, &r);
	check("parse_long_name",
	      rc == 0 && r.verdict == V_INFECTED && strlen(r.virus) == sizeof r.virus - 1 &&
	          r.virus[0] == 'N',
	      "a 399-byte name was not kept as infected with a cut name");
}

static void check_bad_addresses(int fd)
{
	static const char *const bad[] = {
	    "",
	    "clamd.sock",
	    "unix:",
	    "tcp:",
	    "tcp:127.0.0.1",
	    "tcp::3310",
	    "tcp:127.0.0.1:",
	    "tcp:127.0.0.1:0",
	    "tcp:127.0.0.1:65536",
	    "tcp:127.0.0.1:99999999999999999999",
	    "tcp:127.0.0.1:33x",
	    "tcp:::1:3310",
	    "tcp:[::1]3310",
	    "tcp:[::1",
	    "udp:127.0.0.1:3310",
	};
	struct clamd_result r;
	char name[64];
	size_t i;
	int rc, bad_n = 0;

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		rc = clamd_scan_fd(bad[i], fd, pol(1 << 20), OK_MS, &r);
		snprintf(name, sizeof name, "bad_address_%zu", i);
		if (rc != -1 || r.verdict != V_ERROR || strncmp(r.reply, "bad address", 11) != 0) {
			fail(name, "'%s' gave rc=%d verdict=%s reply='%s'", bad[i], rc,
			     vname(r.verdict), r.reply);
			bad_n++;
		}
	}
	rc = clamd_scan_fd(NULL, fd, pol(1 << 20), OK_MS, &r);
	if (rc != -1 || r.verdict != V_ERROR) {
		fail("bad_address_null", "gave rc=%d verdict=%s", rc, vname(r.verdict));
		bad_n++;
	}
	if (bad_n == 0)
		pass("bad_addresses");
	rc = clamd_scan_fd("unix:/nonexistent/x.sock", fd, pol(1 << 20), 0, &r);
	expect("bad_timeout", rc, &r, -1, V_ERROR, NULL, "bad timeout");
	rc = clamd_scan_fd("unix:/nonexistent/x.sock", -1, pol(1 << 20), OK_MS, &r);
	expect("bad_fd", rc, &r, -1, V_ERROR, NULL, "fstat: ");
	{
		int p[2];

		if (pipe2(p, O_CLOEXEC) < 0)
			die_setup("pipe2");
		rc = clamd_scan_fd("unix:/nonexistent/x.sock", p[0], pol(1 << 20), OK_MS, &r);
		expect("not_regular_file", rc, &r, -1, V_ERROR, NULL, "not a regular file");
		close(p[0]);
		close(p[1]);
	}
}

/* Scan one file made by file_make in the session, with OK_MS. */
static int session_scan_file(struct clamd_session *cs, const char *name, struct clamd_result *r)
{
	int fd = file_ro(name);
	int rc = clamd_session_scan_fd(cs, fd, OK_MS, r);

	close(fd);
	return rc;
}

/* Four parts in one session at addr: each verdict right, all on the one connection. */
static void check_session(const char *addr, const char *prefix, const char *eicar_name)
{
	static const char *const files[] = {"eicar.com", "clean.txt", "eicar.com", "empty"};
	char *const addrs[] = {(char *)addr, NULL};
	struct clamd_session cs;
	struct clamd_result r;
	char name[64];
	int ok = 1;

	clamd_session_init(&cs, addrs, &pol_main);
	for (size_t i = 0; i < ARRAY_LEN(files); i++) {
		int fd = file_ro(files[i]);
		int rc = clamd_session_scan_fd(&cs, fd, OK_MS, &r);
		int infected = strcmp(files[i], "eicar.com") == 0;

		close(fd);
		snprintf(name, sizeof name, "session_%s_%zu_%s", addr[0] == 'u' ? "unix" : "tcp", i,
		         files[i]);
		ok &= expect(name, rc, &r, 0, infected ? V_INFECTED : V_CLEAN,
		             infected ? eicar_name : "", prefix);
	}
	snprintf(name, sizeof name, "session_%s_one_connection", addr[0] == 'u' ? "unix" : "tcp");
	if (ok && cs.s >= 0 && cs.next_id == 5 && !cs.failed)
		pass(name);
	else
		fail(name,
		     "the session did not carry all four requests (s=%d next_id=%u failed=%d)",
		     cs.s, cs.next_id, cs.failed);
	clamd_session_close(&cs);
	check(name, cs.s == -1, "the session is still open after close");
}

/* Ten parts (more than one batch) pipelined in one session at addr, a pipe among them:
 * each result right, and every request on the one connection. */
static void check_session_batch(const char *addr, const char *eicar_name)
{
	char *const addrs[] = {(char *)addr, NULL};
	struct clamd_session cs;
	struct clamd_result r[10];
	int fds[10], p[2], ok = 1;
	const char *kind = addr[0] == 'u' ? "unix" : "tcp";
	char name[64];

	if (pipe2(p, O_CLOEXEC) < 0)
		die_setup("pipe2");
	for (int i = 0; i < 10; i++)
		fds[i] = i == 5 ? p[0] : file_ro(i % 3 == 0 ? "eicar.com" : "clean.txt");
	clamd_session_init(&cs, addrs, &pol_main);
	clamd_session_scan_fds(&cs, fds, 10, OK_MS, r);
	for (int i = 0; i < 10; i++) {
		snprintf(name, sizeof name, "session_batch_%s_%d", kind, i);
		if (i == 5)
			ok &= expect(name, -1, &r[i], -1, V_ERROR, "", "not a regular file");
		else if (i % 3 == 0)
			ok &= expect(name, 0, &r[i], 0, V_INFECTED, eicar_name, NULL);
		else
			ok &= expect(name, 0, &r[i], 0, V_CLEAN, "", NULL);
	}
	snprintf(name, sizeof name, "session_batch_%s_one_connection", kind);
	if (ok && cs.s >= 0 && !cs.failed && cs.next_id == 10)
		pass(name);
	else
		fail(name, "s=%d failed=%d next_id=%u (want 10: nine requests)", cs.s, cs.failed,
		     cs.next_id);
	clamd_session_close(&cs);
	for (int i = 0; i < 10; i++)
		close(fds[i]);
	close(p[1]);
}

int main(int argc, char **argv)
{
	/* The EICAR test file in two halves, joined at run time, so that neither this source
	 * nor the binary carries the whole string for a scanner to flag. */
	static const char half1[] = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-";
	static const char *volatile half2 = "ANTIVIRUS-TEST-FILE!$H+H*";
	static const char clean_text[] = "Hello, this is a perfectly clean attachment.\n";
	const char *ux, *tc, *eicar_name, *env;
	char eicar[80], name_addr[300], dead_unix[200], dead_tcp[64], ver[256], *colon;
	char *addrs[5];
	unsigned long long stream_max = 1048576;
	int fd_eicar, fd_clean, fd_empty, fd_exact, fd_over, fd_over_clamd, fd_huge;
	int fds_before, fds_after, rc, ls;
	struct clamd_result r;
	struct fake f;
	struct fake_spec sp;
	int64_t t0;

	if (argc == 1) {
		/* Run by tests/run.py with no clamd: tests/t_clamd.py runs it with one. */
		printf("SKIP clamd_client: needs a clamd; run through tests/t_clamd.py\n");
		return 0;
	}
	if (argc != 3 || strncmp(argv[1], "unix:", 5) != 0 || strncmp(argv[2], "tcp:", 4) != 0) {
		fprintf(stderr, "usage: test_clamd unix:/path/clamd.sock tcp:HOST:PORT\n");
		return 2;
	}
	ux = argv[1];
	tc = argv[2];
	eicar_name = getenv("TEST_CLAMD_EICAR_NAME");
	if (eicar_name == NULL || *eicar_name == '\0')
		eicar_name = "eicar.com.UNOFFICIAL";
	env = getenv("TEST_CLAMD_STREAM_MAX");
	if (env != NULL && *env != '\0') {
		char *end;

		errno = 0;
		stream_max = strtoull(env, &end, 10);
		if (errno != 0 || *end != '\0' || stream_max == 0) {
			fprintf(stderr, "test_clamd: bad TEST_CLAMD_STREAM_MAX '%s'\n", env);
			return 2;
		}
	}
	if (signal(SIGPIPE, SIG_DFL) == SIG_ERR)
		die_setup("signal SIGPIPE");
	pol_main.stream_max = stream_max;
	pol_main.max_file_size = UINT64_MAX;
	pol_main.peer_uids[0] = geteuid();
	pol_main.peer_uids[1] = 0;
	pol_main.n_peer_uids = 2;

	env = getenv("TMPDIR");
	snprintf(tmpdir, sizeof tmpdir, "%s/test_clamd.XXXXXX",
	         env != NULL && *env != '\0' && strlen(env) < 60 ? env : "/tmp");
	if (mkdtemp(tmpdir) == NULL)
		die_setup("mkdtemp");

	snprintf(eicar, sizeof eicar, "%s%s", half1, half2);
	if (strlen(eicar) != 68) {
		fprintf(stderr, "test_clamd: EICAR string is %zu bytes, not 68\n", strlen(eicar));
		return 2;
	}
	fd_eicar = file_make("eicar.com", eicar, 68, 0);
	fd_clean = file_make("clean.txt", clean_text, strlen(clean_text), 0);
	fd_empty = file_make("empty", "", 0, 0);
	fd_exact = file_make("exact", "", 0, (off_t)stream_max);
	fd_over = file_make("over", "", 0, (off_t)stream_max + 1);
	fd_over_clamd = file_make("over-clamd", "", 0, 2 * (off_t)stream_max + 1);
	fd_huge = file_make("huge", "", 0, (off_t)HUGE_SIZE);

	snprintf(dead_unix, sizeof dead_unix, "unix:%s/nobody-listens.sock", tmpdir);
	/* A port that was just free: bind, learn it, close. */
	ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	{
		struct sockaddr_in sin;
		socklen_t len = sizeof sin;

		memset(&sin, 0, sizeof sin);
		sin.sin_family = AF_INET;
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (ls < 0 || bind(ls, (struct sockaddr *)&sin, sizeof sin) < 0 ||
		    getsockname(ls, (struct sockaddr *)&sin, &len) < 0)
			die_setup("free port");
		snprintf(dead_tcp, sizeof dead_tcp, "tcp:127.0.0.1:%u", ntohs(sin.sin_port));
		close(ls);
	}
	colon = strrchr(tc, ':');
	snprintf(name_addr, sizeof name_addr, "tcp:localhost%s", colon);

	fds_before = fd_count();

	/* -- reply mapping and argument checks, no server needed -- */
	check_parse();
	check_bad_addresses(fd_clean);

	/* -- ping and version -- */
	check("ping_unix", clamd_ping(ux, &pol_main, OK_MS) == 0, "no PONG");
	check("ping_tcp", clamd_ping(tc, &pol_main, OK_MS) == 0, "no PONG");
	check("ping_tcp_by_name", clamd_ping(name_addr, &pol_main, OK_MS) == 0,
	      "no PONG via tcp:localhost");
	check("ping_dead", clamd_ping(dead_unix, &pol_main, OK_MS) == -1, "PONG from nowhere");
	rc = clamd_version(ux, &pol_main, OK_MS, ver, sizeof ver);
	if (rc == 0 && strncmp(ver, "ClamAV ", 7) == 0)
		pass("version_unix");
	else
		fail("version_unix", "rc=%d '%s'", rc, ver);
	rc = clamd_version(tc, &pol_main, OK_MS, ver, sizeof ver);
	if (rc == 0 && strncmp(ver, "ClamAV ", 7) == 0)
		pass("version_tcp");
	else
		fail("version_tcp", "rc=%d '%s'", rc, ver);
	rc = clamd_version(ux, &pol_main, OK_MS, ver, 8);
	if (rc == -1 && strcmp(ver, "ClamAV ") == 0)
		pass("version_truncated");
	else
		fail("version_truncated", "rc=%d '%s'", rc, ver);
	rc = clamd_version(dead_unix, &pol_main, OK_MS, ver, sizeof ver);
	if (rc == -1 && strncmp(ver, "connect: ", 9) == 0)
		pass("version_dead");
	else
		fail("version_dead", "rc=%d '%s'", rc, ver);

	/* -- real scans -- */
	rc = clamd_scan_fd(ux, fd_eicar, pol(stream_max), OK_MS, &r);
	if (expect("eicar_fildes", rc, &r, 0, V_INFECTED, eicar_name, "fd["))
		check("eicar_fildes_addr", strcmp(r.addr, ux) == 0, "r->addr is not the address");
	rc = clamd_scan_fd(tc, fd_eicar, pol(stream_max), OK_MS, &r);
	if (expect("eicar_instream", rc, &r, 0, V_INFECTED, eicar_name, "stream: "))
		check("eicar_instream_addr", strcmp(r.addr, tc) == 0, "r->addr is not the address");
	rc = clamd_scan_fd(ux, fd_clean, pol(stream_max), OK_MS, &r);
	expect("clean_fildes", rc, &r, 0, V_CLEAN, "", "fd[");
	rc = clamd_scan_fd(tc, fd_clean, pol(stream_max), OK_MS, &r);
	expect("clean_instream", rc, &r, 0, V_CLEAN, "", "stream: OK");
	rc = clamd_scan_fd(ux, fd_empty, pol(stream_max), OK_MS, &r);
	expect("empty_fildes", rc, &r, 0, V_CLEAN, "", NULL);
	rc = clamd_scan_fd(tc, fd_empty, pol(stream_max), OK_MS, &r);
	expect("empty_instream", rc, &r, 0, V_CLEAN, "", "stream: OK");

	/* The caller's offset is neither used nor moved. */
	if (lseek(fd_eicar, 7, SEEK_SET) != 7)
		die_setup("lseek");
	rc = clamd_scan_fd(tc, fd_eicar, pol(stream_max), OK_MS, &r);
	if (expect("offset_instream_from_0", rc, &r, 0, V_INFECTED, eicar_name, NULL))
		check("offset_instream_kept", lseek(fd_eicar, 0, SEEK_CUR) == 7, "offset moved");
	rc = clamd_scan_fd(ux, fd_eicar, pol(stream_max), OK_MS, &r);
	if (expect("offset_fildes_from_0", rc, &r, 0, V_INFECTED, eicar_name, NULL))
		check("offset_fildes_kept", lseek(fd_eicar, 0, SEEK_CUR) == 7, "offset moved");

	/* -- StreamMaxLength -- */
	rc = clamd_scan_fd(tc, fd_exact, pol(stream_max), OK_MS, &r);
	expect("instream_exactly_stream_max", rc, &r, 0, V_CLEAN, "", "stream: OK");
	rc = clamd_scan_fd(tc, fd_over, pol(stream_max), OK_MS, &r);
	expect("instream_over_stream_max", rc, &r, -1, V_UNSCANNABLE, "", "over StreamMaxLength");
	rc = clamd_scan_fd(tc, fd_eicar, pol(67), OK_MS, &r);
	expect("instream_eicar_over_stream_max", rc, &r, -1, V_UNSCANNABLE, "",
	       "over StreamMaxLength");
	rc = clamd_scan_fd(tc, fd_empty, pol(0), OK_MS, &r);
	expect("instream_empty_stream_max_0", rc, &r, 0, V_CLEAN, "", "stream: OK");
	/* Not a byte of an oversized file goes out. */
	memset(&sp, 0, sizeof sp);
	sp.kind = FAKE_COUNTER;
	fake_start(&f, 1, &sp);
	rc = clamd_scan_fd(f.addr, fd_over, pol(stream_max), OK_MS, &r);
	{
		long long got = fake_count(&f, 300);

		if (rc == -1 && r.verdict == V_UNSCANNABLE && got <= 0)
			pass("instream_over_stream_max_sends_nothing");
		else
			fail("instream_over_stream_max_sends_nothing",
			     "rc=%d verdict=%s, %lld bytes sent", rc, vname(r.verdict), got);
	}
	fake_stop(&f);
	/* Our limit above clamd's: clamd refuses mid-stream, and that is unscannable too. */
	rc = clamd_scan_fd(tc, fd_over_clamd, pol(4 * stream_max), OK_MS, &r);
	expect("instream_over_clamd_limit", rc, &r, -1, V_UNSCANNABLE, "", NULL);
	/* FILDES: clamd reads the file itself, stream_max does not apply. */
	rc = clamd_scan_fd(ux, fd_over, pol(stream_max), OK_MS, &r);
	expect("fildes_ignores_stream_max", rc, &r, 0, V_CLEAN, "", "fd[");

	/* -- dead addresses and failover -- */
	rc = clamd_scan_fd(dead_unix, fd_eicar, pol(stream_max), OK_MS, &r);
	expect("dead_unix", rc, &r, -1, V_ERROR, "", "connect: ");
	rc = clamd_scan_fd(dead_tcp, fd_eicar, pol(stream_max), OK_MS, &r);
	expect("dead_tcp", rc, &r, -1, V_ERROR, "", "connect: Connection refused");
	addrs[0] = dead_unix;
	addrs[1] = dead_tcp;
	addrs[2] = (char *)ux;
	addrs[3] = (char *)tc;
	addrs[4] = NULL;
	rc = clamd_scan_fd_any(addrs, fd_eicar, pol(stream_max), OK_MS, &r);
	if (expect("failover_to_unix", rc, &r, 0, V_INFECTED, eicar_name, NULL))
		check("failover_to_unix_addr", strcmp(r.addr, ux) == 0, r.addr);
	addrs[0] = dead_tcp;
	addrs[1] = (char *)tc;
	addrs[2] = NULL;
	rc = clamd_scan_fd_any(addrs, fd_clean, pol(stream_max), OK_MS, &r);
	if (expect("failover_tcp_to_tcp", rc, &r, 0, V_CLEAN, "", NULL))
		check("failover_tcp_to_tcp_addr", strcmp(r.addr, tc) == 0, r.addr);
	/* A unix socket that fails never falls through to tcp, the weaker trust class. */
	addrs[0] = dead_unix;
	addrs[1] = (char *)tc;
	addrs[2] = NULL;
	rc = clamd_scan_fd_any(addrs, fd_clean, pol(stream_max), OK_MS, &r);
	if (expect("failover_unix_never_to_tcp", rc, &r, -1, V_ERROR, "", "connect: "))
		check("failover_unix_never_to_tcp_addr", strcmp(r.addr, dead_unix) == 0, r.addr);
	rc = clamd_version_any(addrs, &pol_main, OK_MS, ver, sizeof ver);
	check("version_any_unix_never_to_tcp", rc == -1 && strncmp(ver, "connect: ", 9) == 0, ver);
	addrs[0] = (char *)tc;
	rc = clamd_version_any(addrs, &pol_main, OK_MS, ver, sizeof ver);
	check("version_any", rc == 0 && strncmp(ver, "ClamAV ", 7) == 0, ver);
	/* Over StreamMaxLength on tcp is not a verdict: the unix clamd can still scan it. */
	addrs[0] = (char *)tc;
	addrs[1] = (char *)ux;
	addrs[2] = NULL;
	rc = clamd_scan_fd_any(addrs, fd_over, pol(stream_max), OK_MS, &r);
	expect("failover_unscannable_to_fildes", rc, &r, 0, V_CLEAN, "", "fd[");
	addrs[0] = dead_unix;
	addrs[1] = dead_tcp;
	addrs[2] = NULL;
	rc = clamd_scan_fd_any(addrs, fd_eicar, pol(stream_max), OK_MS, &r);
	if (expect("failover_all_dead", rc, &r, -1, V_ERROR, "", "connect: "))
		check("failover_all_dead_addr", strcmp(r.addr, dead_unix) == 0, r.addr);
	/* ... and not a byte reaches a tcp listener listed after a unix socket. */
	memset(&sp, 0, sizeof sp);
	sp.kind = FAKE_COUNTER;
	fake_start(&f, 1, &sp);
	addrs[0] = dead_unix;
	addrs[1] = f.addr;
	addrs[2] = NULL;
	rc = clamd_scan_fd_any(addrs, fd_eicar, pol(stream_max), OK_MS, &r);
	{
		long long got = fake_count(&f, 300);

		check("failover_unix_never_connects_tcp", rc == -1 && got < 0,
		      "the tcp listener after a dead unix socket got a connection");
	}
	fake_stop(&f);

	/* A unix socket with a full backlog (connect: EAGAIN) is an error, and the mail is
	 * held: it does not fall through to the tcp address after it either. */
	{
		struct sockaddr_un sun;
		char full_addr[256];
		int bl, fillers[256], nf = 0, full = 0;

		memset(&sun, 0, sizeof sun);
		sun.sun_family = AF_UNIX;
		if (snprintf(full_addr, sizeof full_addr, "unix:%s/full.sock", tmpdir) >=
		        (int)sizeof full_addr ||
		    strlen(full_addr + 5) >= sizeof sun.sun_path) {
			errno = ENAMETOOLONG;
			die_setup("full.sock path");
		}
		memcpy(sun.sun_path, full_addr + 5, strlen(full_addr + 5) + 1);
		bl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (bl < 0 || bind(bl, (struct sockaddr *)&sun, sizeof sun) < 0 ||
		    listen(bl, 0) < 0)
			die_setup("full.sock");
		while (nf < (int)ARRAY_LEN(fillers)) {
			int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

			if (c < 0)
				die_setup("socket");
			if (connect(c, (struct sockaddr *)&sun, sizeof sun) < 0) {
				full = errno == EAGAIN;
				close(c);
				break;
			}
			fillers[nf++] = c;
		}
		check("unix_backlog_full_setup", full, "the unix socket's backlog never filled");
		memset(&sp, 0, sizeof sp);
		sp.kind = FAKE_COUNTER;
		fake_start(&f, 1, &sp);
		addrs[0] = full_addr;
		addrs[1] = f.addr;
		addrs[2] = NULL;
		rc = clamd_scan_fd_any(addrs, fd_eicar, pol(stream_max), OK_MS, &r);
		{
			long long got = fake_count(&f, 300);

			expect("unix_eagain_is_error", rc, &r, -1, V_ERROR, "",
			       "connect: Resource temporarily unavailable");
			check("unix_eagain_never_to_tcp", got < 0,
			      "the tcp listener after a full unix socket got a connection");
		}
		fake_stop(&f);
		while (nf > 0)
			close(fillers[--nf]);
		close(bl);
		unlink(sun.sun_path);
	}

	/* -- the peer of a unix socket must run as a peer_user -- */
	{
		struct clamd_policy other = pol_main;
		struct clamd_session cs;
		char *const unix_only[] = {(char *)ux, NULL};
		char want[256];

		/* Nobody we run as: the real clamd (our uid or root) is refused. */
		other.peer_uids[0] = 4242;
		other.peer_uids[1] = 4243;
		snprintf(want, sizeof want, "untrusted peer on %s: uid ", ux + 5);
		rc = clamd_scan_fd(ux, fd_eicar, &other, OK_MS, &r);
		expect("peer_untrusted_refused", rc, &r, -1, V_ERROR, "", want);
		check("peer_untrusted_names_uid", strstr(r.reply, "is not a peer_user") != NULL,
		      r.reply);
		rc = clamd_scan_fd(ux, fd_clean, &other, OK_MS, &r);
		expect("peer_untrusted_never_clean", rc, &r, -1, V_ERROR, "", want);
		check("peer_untrusted_ping", clamd_ping(ux, &other, OK_MS) == -1,
		      "PONG from an untrusted peer was accepted");
		other.n_peer_uids = 0;
		rc = clamd_scan_fd(ux, fd_clean, &other, OK_MS, &r);
		expect("peer_none_trusted", rc, &r, -1, V_ERROR, "", want);
		other.n_peer_uids = 2;
		clamd_session_init(&cs, unix_only, &other);
		rc = session_scan_file(&cs, "clean.txt", &r);
		expect("peer_untrusted_session", rc, &r, -1, V_ERROR, "", want);
		clamd_session_close(&cs);
		/* Nothing is sent to an untrusted peer: it sees the connection, no request. */
		memset(&sp, 0, sizeof sp);
		sp.kind = FAKE_COUNTER;
		fake_start(&f, 0, &sp);
		rc = clamd_scan_fd(f.addr, fd_eicar, &other, OK_MS, &r);
		{
			long long got = fake_count(&f, 2000);

			if (rc == -1 && r.verdict == V_ERROR && got == 0)
				pass("peer_untrusted_sends_nothing");
			else
				fail("peer_untrusted_sends_nothing",
				     "rc=%d reply='%s', %lld bytes sent", rc, r.reply, got);
		}
		fake_stop(&f);
	}

	/* -- max_file_size: over it is unscannable on every address, and never sent -- */
	{
		struct clamd_policy small = pol_main;
		struct clamd_session cs;
		struct clamd_result rb[2];
		int fb[2];
		char *const unix_only[] = {(char *)ux, NULL};

		small.max_file_size = 67;
		rc = clamd_scan_fd(ux, fd_eicar, &small, OK_MS, &r);
		expect("max_file_size_fildes", rc, &r, -1, V_UNSCANNABLE, "", "over max_file_size");
		rc = clamd_scan_fd(tc, fd_eicar, &small, OK_MS, &r);
		expect("max_file_size_instream", rc, &r, -1, V_UNSCANNABLE, "",
		       "over max_file_size");
		small.max_file_size = 68;
		rc = clamd_scan_fd(ux, fd_eicar, &small, OK_MS, &r);
		expect("max_file_size_exactly", rc, &r, 0, V_INFECTED, eicar_name, NULL);
		small.max_file_size = 67;
		clamd_session_init(&cs, unix_only, &small);
		rc = session_scan_file(&cs, "eicar.com", &r);
		expect("max_file_size_session", rc, &r, -1, V_UNSCANNABLE, "",
		       "over max_file_size");
		clamd_session_close(&cs);
		fb[0] = file_ro("eicar.com");
		fb[1] = file_ro("clean.txt");
		clamd_session_init(&cs, unix_only, &small);
		clamd_session_scan_fds(&cs, fb, 2, OK_MS, rb);
		expect("max_file_size_batch_over", -1, &rb[0], -1, V_UNSCANNABLE, "",
		       "over max_file_size");
		expect("max_file_size_batch_under", 0, &rb[1], 0, V_CLEAN, "", NULL);
		clamd_session_close(&cs);
		close(fb[0]);
		close(fb[1]);
		memset(&sp, 0, sizeof sp);
		sp.kind = FAKE_COUNTER;
		fake_start(&f, 0, &sp);
		rc = clamd_scan_fd(f.addr, fd_eicar, &small, OK_MS, &r);
		{
			long long got = fake_count(&f, 300);

			check("max_file_size_sends_nothing", rc == -1 && got < 0,
			      "a file over max_file_size was sent");
		}
		fake_stop(&f);
	}
	addrs[0] = NULL;
	rc = clamd_scan_fd_any(addrs, fd_eicar, pol(stream_max), OK_MS, &r);
	expect("failover_empty_list", rc, &r, -1, V_ERROR, "", "no clamd address");

	/* -- sessions (zIDSESSION): several parts over one connection -- */
	check_session(ux, "fd[", eicar_name);
	check_session(tc, "stream: ", eicar_name);
	check_session_batch(ux, eicar_name);
	check_session_batch(tc, eicar_name);
	{
		struct clamd_session cs;
		char *const dead_then_live[] = {dead_unix, (char *)ux, NULL};
		char *const dead_only[] = {dead_unix, NULL};
		char *const none[] = {NULL};
		char *const tcp_only[] = {(char *)tc, NULL};
		int fd;

		clamd_session_init(&cs, dead_then_live, &pol_main);
		rc = session_scan_file(&cs, "eicar.com", &r);
		if (expect("session_failover", rc, &r, 0, V_INFECTED, eicar_name, "fd["))
			check("session_failover_addr", strcmp(r.addr, ux) == 0 && cs.s >= 0,
			      "not a session on the live address");
		clamd_session_close(&cs);

		clamd_session_init(&cs, dead_only, &pol_main);
		rc = session_scan_file(&cs, "clean.txt", &r);
		expect("session_all_dead", rc, &r, -1, V_ERROR, "", "connect: ");
		clamd_session_close(&cs);

		clamd_session_init(&cs, none, &pol_main);
		rc = session_scan_file(&cs, "clean.txt", &r);
		expect("session_no_address", rc, &r, -1, V_ERROR, "", "no clamd address");
		clamd_session_close(&cs);

		/* Over StreamMaxLength in a session: unscannable, and nothing is sent. */
		clamd_session_init(&cs, tcp_only, &pol_main);
		rc = session_scan_file(&cs, "over", &r);
		expect("session_over_stream_max", rc, &r, -1, V_UNSCANNABLE, "",
		       "over StreamMaxLength");
		clamd_session_close(&cs);

		/* A clamd that never answers costs one timeout, not one per attempt. */
		memset(&sp, 0, sizeof sp);
		sp.kind = FAKE_SILENT;
		fake_start(&f, 0, &sp);
		{
			char *const silent[] = {f.addr, NULL};

			clamd_session_init(&cs, silent, &pol_main);
			fd = file_ro("clean.txt");
			t0 = now_ms();
			rc = clamd_session_scan_fd(&cs, fd, SHORT_MS, &r);
			expect_timed("session_timeout_once", now_ms() - t0, rc, &r, -1, V_ERROR,
			             "timeout", SHORT_MS);
			/* The rest of the message is not sent to it again. */
			t0 = now_ms();
			rc = clamd_session_scan_fd(&cs, fd, SHORT_MS, &r);
			expect_timed("session_timeout_rest_of_message", now_ms() - t0, rc, &r, -1,
			             V_ERROR, "timeout", 0);
			close(fd);
			clamd_session_close(&cs);
		}
		fake_stop(&f);

		/* A batch that a silent clamd never answers: one timeout for all of it. */
		fake_start(&f, 0, &sp);
		{
			char *const silent[] = {f.addr, NULL};
			struct clamd_result rb[3];
			int fb[3];

			for (int i = 0; i < 3; i++)
				fb[i] = file_ro("clean.txt");
			clamd_session_init(&cs, silent, &pol_main);
			t0 = now_ms();
			clamd_session_scan_fds(&cs, fb, 3, SHORT_MS, rb);
			expect_timed("session_batch_timeout_once", now_ms() - t0, -1, &rb[0], -1,
			             V_ERROR, "timeout", SHORT_MS);
			expect("session_batch_timeout_all", -1, &rb[2], -1, V_ERROR, "", "timeout");
			for (int i = 0; i < 3; i++)
				close(fb[i]);
			clamd_session_close(&cs);
		}
		fake_stop(&f);
	}

	/* -- timeouts -- */
	memset(&sp, 0, sizeof sp);
	sp.kind = FAKE_SILENT;
	fake_start(&f, 0, &sp);
	t0 = now_ms();
	rc = clamd_scan_fd(f.addr, fd_eicar, pol(stream_max), SHORT_MS, &r);
	expect_timed("timeout_silent_unix", now_ms() - t0, rc, &r, -1, V_ERROR, "timeout",
	             SHORT_MS);
	t0 = now_ms();
	rc = clamd_ping(f.addr, &pol_main, SHORT_MS);
	check("timeout_silent_ping", rc == -1 && now_ms() - t0 <= SHORT_MS + LATE_MS,
	      "ping of a silent server did not fail in time");
	fake_stop(&f);

	fake_start(&f, 1, &sp);
	t0 = now_ms();
	rc = clamd_scan_fd(f.addr, fd_huge, pol((uint64_t)HUGE_SIZE), SHORT_MS, &r);
	expect_timed("timeout_silent_tcp_send", now_ms() - t0, rc, &r, -1, V_ERROR, "timeout",
	             SHORT_MS);
	fake_stop(&f);

	sp.kind = FAKE_BACKLOG;
	fake_start(&f, 1, &sp);
	t0 = now_ms();
	rc = clamd_scan_fd(f.addr, fd_clean, pol(stream_max), SHORT_MS, &r);
	expect_timed("timeout_connect", now_ms() - t0, rc, &r, -1, V_ERROR, "timeout", SHORT_MS);
	fake_stop(&f);

	/* A reply that is not followed by the close clamd always does: fail closed. */
	memset(&sp, 0, sizeof sp);
	sp.kind = FAKE_REPLIER;
	sp.read_first = 9;
	sp.reply = "fd[3]: OK";
	sp.reply_len = 10;
	sp.keep_open = 1;
	fake_start(&f, 0, &sp);
	t0 = now_ms();
	rc = clamd_scan_fd(f.addr, fd_clean, pol(stream_max), SHORT_MS, &r);
	expect_timed("timeout_reply_without_close", now_ms() - t0, rc, &r, -1, V_ERROR, "timeout",
	             SHORT_MS);
	fake_stop(&f);

	/* EINTR everywhere: poll is restarted with the time left, not from scratch. */
	memset(&sp, 0, sizeof sp);
	sp.kind = FAKE_SILENT;
	fake_start(&f, 0, &sp);
	alarms = 0;
	storm(1);
	t0 = now_ms();
	rc = clamd_scan_fd(f.addr, fd_eicar, pol(stream_max), SHORT_MS, &r);
	{
		int64_t ms = now_ms() - t0;

		storm(0);
		expect_timed("timeout_under_eintr_storm", ms, rc, &r, -1, V_ERROR, "timeout",
		             SHORT_MS);
	}
	fake_stop(&f);
	storm(1);
	rc = clamd_scan_fd(ux, fd_eicar, pol(stream_max), OK_MS, &r);
	storm(0);
	expect("eicar_fildes_under_eintr_storm", rc, &r, 0, V_INFECTED, eicar_name, NULL);
	storm(1);
	rc = clamd_scan_fd(tc, fd_exact, pol(stream_max), OK_MS, &r);
	storm(0);
	expect("instream_under_eintr_storm", rc, &r, 0, V_CLEAN, "", "stream: OK");
	check("eintr_storm_happened", alarms > 10, "the interval timer did not fire");

	/* -- connections closed early -- */
	memset(&sp, 0, sizeof sp);
	sp.kind = FAKE_CLOSER;
	sp.read_first = 1000;
	fake_start(&f, 1, &sp);
	t0 = now_ms();
	rc = clamd_scan_fd(f.addr, fd_huge, pol((uint64_t)HUGE_SIZE), OK_MS, &r);
	expect_timed("closed_mid_stream_tcp", now_ms() - t0, rc, &r, -1, V_ERROR, NULL, -1);
	fake_stop(&f);

	sp.read_first = 8; /* the command, not the descriptor's byte */
	fake_start(&f, 0, &sp);
	t0 = now_ms();
	rc = clamd_scan_fd(f.addr, fd_eicar, pol(stream_max), OK_MS, &r);
	expect_timed("closed_before_fd_unix", now_ms() - t0, rc, &r, -1, V_ERROR, NULL, -1);
	fake_stop(&f);

	sp.read_first = 9;
	fake_start(&f, 0, &sp);
	t0 = now_ms();
	rc = clamd_scan_fd(f.addr, fd_eicar, pol(stream_max), OK_MS, &r);
	expect_timed("closed_without_reply_unix", now_ms() - t0, rc, &r, -1, V_ERROR,
	             "connection closed without reply", -1);
	fake_stop(&f);

	/* -- malformed replies from a fake clamd -- */
	{
		static const struct {
			const char *name;
			const char *reply;
			size_t len;
			int rc;
			enum verdict v;
			const char *want_reply;
		} fr[] = {
		    {"fake_ok", "fd[3]: OK", 10, 0, V_CLEAN, "fd[3]: OK"},
		    {"fake_ok_newline_stripped", "fd[3]: OK\n", 11, 0, V_CLEAN, "fd[3]: OK"},
		    {"fake_found", "fd[3]: Test.Virus FOUND", 24, 0, V_INFECTED, NULL},
		    {"fake_no_nul", "fd[3]: OK", 9, -1, V_ERROR, "reply without NUL"},
		    {"fake_two_replies", "fd[3]: OK\0fd[3]: OK", 20, -1, V_ERROR, "more than one"},
		    {"fake_limits_found", "fd[3]: Heuristics.Limits.Exceeded.MaxFileSize FOUND", 52,
		     -1, V_UNSCANNABLE, "fd[3]: Heuristics.Limits"},
		    {"fake_garbage", "hello", 6, -1, V_ERROR, "hello"},
		    {"fake_empty_reply", "", 1, -1, V_ERROR, "empty reply"},
		    {"fake_binary", "fd[3]: OK\x01", 11, -1, V_ERROR, NULL},
		};
		static char big[2000];
		size_t i;

		for (i = 0; i < sizeof fr / sizeof fr[0]; i++) {
			memset(&sp, 0, sizeof sp);
			sp.kind = FAKE_REPLIER;
			sp.read_first = 9;
			sp.reply = fr[i].reply;
			sp.reply_len = fr[i].len;
			fake_start(&f, 0, &sp);
			rc = clamd_scan_fd(f.addr, fd_clean, pol(stream_max), OK_MS, &r);
			expect(fr[i].name, rc, &r, fr[i].rc, fr[i].v,
			       fr[i].v == V_INFECTED ? "Test.Virus" : "", fr[i].want_reply);
			fake_stop(&f);
		}
		memset(big, 'A', sizeof big);
		memset(&sp, 0, sizeof sp);
		sp.kind = FAKE_REPLIER;
		sp.read_first = 9;
		sp.reply = big;
		sp.reply_len = sizeof big;
		fake_start(&f, 0, &sp);
		rc = clamd_scan_fd(f.addr, fd_clean, pol(stream_max), OK_MS, &r);
		expect("fake_reply_too_long", rc, &r, -1, V_ERROR, "", "reply too long");
		fake_stop(&f);

		/* A verdict before the stream is complete is not about our file. */
		memset(&sp, 0, sizeof sp);
		sp.kind = FAKE_REPLIER;
		sp.read_first = 10; /* "zINSTREAM\0" */
		sp.reply = "stream: OK";
		sp.reply_len = 11;
		fake_start(&f, 1, &sp);
		rc = clamd_scan_fd(f.addr, fd_huge, pol((uint64_t)HUGE_SIZE), OK_MS, &r);
		expect("fake_ok_before_end_of_stream", rc, &r, -1, V_ERROR, "", NULL);
		fake_stop(&f);

		/* And a failed clamd makes failover move on to a good one. */
		memset(&sp, 0, sizeof sp);
		sp.kind = FAKE_REPLIER;
		sp.read_first = 9;
		sp.reply = "fd[3]: Can't allocate memory ERROR";
		sp.reply_len = 35;
		fake_start(&f, 0, &sp);
		addrs[0] = f.addr;
		addrs[1] = (char *)ux;
		addrs[2] = NULL;
		rc = clamd_scan_fd_any(addrs, fd_eicar, pol(stream_max), OK_MS, &r);
		expect("failover_after_error_reply", rc, &r, 0, V_INFECTED, eicar_name, NULL);
		fake_stop(&f);
	}

	/* -- over-long and malformed session replies: an error, never a verdict or a crash -- */
	{
		/* "zIDSESSION\0", then per part "zFILDES\0" and the descriptor's byte. */
		enum { SESSION_REQ2 = 11 + 2 * 9 };
		static char longrep[1600];
		static const struct {
			const char *name;
			const char *reply; /* NULL: longrep */
			size_t len;
		} sr[] = {
		    {"session_pipeline_reply_too_long", NULL, 0},
		    {"session_pipeline_reply_no_id", "fd[3]: OK", 10},
		    {"session_pipeline_reply_signed_id", "-1: fd[3]: OK\0+2: fd[3]: OK", 28},
		    {"session_pipeline_reply_unknown_id", "7: fd[3]: OK", 13},
		};
		size_t i, k;

		/* "1: " + 1,500 bytes + " FOUND": fits the two-reply receive buffer, not a line. */
		k = (size_t)snprintf(longrep, sizeof longrep, "1: ");
		memset(longrep + k, 'A', 1500);
		k += 1500;
		k += (size_t)snprintf(longrep + k, sizeof longrep - k, " FOUND");
		for (i = 0; i < ARRAY_LEN(sr); i++) {
			struct clamd_session cs;
			struct clamd_result rb[2];
			int fb[2];
			char *const one[] = {f.addr, NULL};

			memset(&sp, 0, sizeof sp);
			sp.kind = FAKE_REPLIER;
			sp.read_first = SESSION_REQ2;
			sp.reply = sr[i].reply ? sr[i].reply : longrep;
			sp.reply_len = sr[i].reply ? sr[i].len : k + 1;
			sp.keep_open = 1;
			fake_start(&f, 0, &sp);
			fb[0] = file_ro("clean.txt");
			fb[1] = file_ro("clean.txt");
			clamd_session_init(&cs, one, &pol_main);
			clamd_session_scan_fds(&cs, fb, 2, SHORT_MS, rb);
			if (rb[0].verdict == V_ERROR && rb[1].verdict == V_ERROR)
				pass(sr[i].name);
			else
				fail(sr[i].name, "verdicts %s/%s, replies '%s' / '%s'",
				     vname(rb[0].verdict), vname(rb[1].verdict), rb[0].reply,
				     rb[1].reply);
			clamd_session_close(&cs);
			close(fb[0]);
			close(fb[1]);
			fake_stop(&f);
		}

		/* The same over-long reply to a single session request (not pipelined). */
		memset(&sp, 0, sizeof sp);
		sp.kind = FAKE_REPLIER;
		sp.read_first = 11 + 9;
		sp.reply = longrep;
		sp.reply_len = k + 1;
		sp.keep_open = 1;
		fake_start(&f, 0, &sp);
		{
			struct clamd_session cs;
			char *const one[] = {f.addr, NULL};

			clamd_session_init(&cs, one, &pol_main);
			rc = session_scan_file(&cs, "clean.txt", &r);
			expect("session_reply_too_long", rc, &r, -1, V_ERROR, "", NULL);
			clamd_session_close(&cs);
		}
		fake_stop(&f);
	}

	fds_after = fd_count();
	if (fds_after == fds_before)
		pass("no_fd_leak");
	else
		fail("no_fd_leak", "%d descriptors open before, %d after", fds_before, fds_after);

	close(fd_eicar);
	close(fd_clean);
	close(fd_empty);
	close(fd_exact);
	close(fd_over);
	close(fd_over_clamd);
	close(fd_huge);
	{
		static const char *const names[] = {"eicar.com", "clean.txt",  "empty", "exact",
		                                    "over",      "over-clamd", "huge"};
		char path[256];
		size_t i;

		for (i = 0; i < sizeof names / sizeof names[0]; i++) {
			snprintf(path, sizeof path, "%s/%s", tmpdir, names[i]);
			unlink(path);
		}
		if (rmdir(tmpdir) < 0)
			fprintf(stderr, "test_clamd: rmdir %s: %s\n", tmpdir, strerror(errno));
	}
	return failures ? 1 : 0;
}
