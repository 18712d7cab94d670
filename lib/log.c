/*
 * log - see log.h.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

static const char *log_prog = "spoold";
static enum log_target log_tgt = LOG_TO_STDERR;
static enum log_level log_min = LOG_LVL_INFO;
/* Standard error is a journald stream: lines carry a <N> syslog priority prefix. */
static int log_journal;

/* systemd sets JOURNAL_STREAM=<dev>:<inode> for a service whose standard error goes to the
 * journal. It is inherited by everything the service starts, so it counts only while
 * standard error still is that very stream (a child with its own stderr, a test's file). */
static int log_stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
		return 0;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

/* Who started the program, taken before it may become another user (spoolctl run as
 * root becomes the spool's user): the audit trail names the operator, not that user. */
static uid_t log_caller_uid;

void log_init(const char *prog)
{
	const char *slash = strrchr(prog, '/');
	log_prog = slash ? slash + 1 : prog;
	log_journal = log_stderr_is_journal();
	log_caller_uid = getuid();
}

uid_t log_caller(void)
{
	return log_caller_uid;
}

/* ---- syslog ----------------------------------------------------------------------- */

/* The syslog socket: ours rather than syslog(3)'s, whose path (/dev/log) is fixed in libc,
 * so that the test build can point it elsewhere (SPOOLD_TEST_SYSLOG_SOCKET) and a test can
 * read what a program sends, on any host, without taking /dev/log from the syslog daemon.
 * Production and tests run this same code; only the path differs. */
static int log_sys_fd = -1;
static int log_sys_stream; /* the socket is SOCK_STREAM: each message ends in a NUL */

static const char *log_sys_path(void)
{
#ifdef SPOOLD_CRASH_POINTS
	const char *p = getenv("SPOOLD_TEST_SYSLOG_SOCKET");
	if (p && *p)
		return p;
#endif
	return "/dev/log";
}

/* Connect once (close-on-exec; kept for the life of the process, as openlog's LOG_NDELAY
 * did). Datagram first, as syslog daemons listen; a stream socket where the daemon only
 * takes those (EPROTOTYPE), as syslog(3) does. Failing, messages are dropped: there is
 * nowhere left to report it. */
static void log_sys_connect(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (log_sys_fd >= 0 || bsnprintf(sa.sun_path, sizeof sa.sun_path, "%s", log_sys_path()) < 0)
		return;
	for (int stream = 0; stream <= 1; stream++) {
		int fd = socket(AF_UNIX, (stream ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return;
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
			log_sys_fd = fd;
			log_sys_stream = stream;
			return;
		}
		int e = errno;
		close(fd);
		if (e != EPROTOTYPE)
			return;
	}
}

/* One message, "<PRI>Mmm dd hh:mm:ss prog[pid]: text" (what syslog(3) sends). A daemon
 * that restarted has a new socket: reconnect and send once more. */
static void log_sys_send(int pri, const char *text)
{
	char stamp[32] = "", line[4608];
	time_t now = time(NULL);
	struct tm tm;
	if (localtime_r(&now, &tm))
		strftime(stamp, sizeof stamp, "%b %e %T", &tm);
	int n = snprintf(line, sizeof line, "<%d>%s %s[%ld]: %s", pri, stamp, log_prog,
	                 (long)getpid(), text);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line)
		n = sizeof line - 1;
	for (int attempt = 0; attempt < 2; attempt++) {
		log_sys_connect();
		if (log_sys_fd < 0)
			return;
		if (send(log_sys_fd, line, (size_t)n + (size_t)log_sys_stream, MSG_NOSIGNAL) >= 0)
			return;
		close(log_sys_fd);
		log_sys_fd = -1;
	}
}

void log_configure(enum log_target target, enum log_level level)
{
	log_tgt = target;
	log_min = level;
	if (target == LOG_TO_SYSLOG)
		log_sys_connect();
}

/*
 * Copy src to dst (bounded, always terminated), writing every byte that is not printable
 * ASCII as \xNN. A log line is read by people on terminals and by parsers one line at a
 * time, and its arguments carry sender- and scanner-chosen bytes (subjects, file names,
 * virus names, SMTP replies): a newline or CR in one must not forge a second line, an
 * ESC must not colour or rewrite a terminal, and a byte >= 0x80 must not start a
 * multi-byte sequence that swallows what follows. Callers that already escaped keep their
 * "\xNN" text as it was (a backslash is printable); only raw bytes change here.
 */
static void log_escape(char *dst, size_t len, const char *src)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)src; *p; p++) {
		if (*p >= 0x20 && *p < 0x7f) {
			if (o + 1 >= len)
				break;
			dst[o++] = (char)*p;
		} else {
			if (o + 4 >= len)
				break;
			dst[o++] = '\\';
			dst[o++] = 'x';
			dst[o++] = hex[*p >> 4];
			dst[o++] = hex[*p & 15];
		}
	}
	dst[o] = '\0';
}

static void log_emit(enum log_level lvl, const char *qid, const char *fmt, va_list ap)
{
	static const char *names[] = {"debug", "info", "warning", "error"};
	static const int prio[] = {LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR};
	/* A level outside the tables is a bug in the caller, never input: panic (with a
	 * valid level, so this cannot recurse) rather than read past them. */
	if ((unsigned)lvl >= ARRAY_LEN(names) || (unsigned)lvl >= ARRAY_LEN(prio))
		log_panic("log_emit: bad level %d", (int)lvl);
	if (lvl < log_min)
		return;
	int saved = errno;
	char raw[4096], msg[4096];
	vsnprintf(raw, sizeof raw, fmt, ap);
	log_escape(msg, sizeof msg, raw);
	char qbuf[128];
	if (qid) {
		log_escape(qbuf, sizeof qbuf, qid);
		qid = qbuf;
	}
	/* One write per line, so lines from several processes sharing stderr never interleave. */
	char line[4352];
	if (log_tgt == LOG_TO_SYSLOG) {
		if (qid)
			snprintf(line, sizeof line, "%s: qid=%s %s", names[lvl], qid, msg);
		else
			snprintf(line, sizeof line, "%s: %s", names[lvl], msg);
		log_sys_send(LOG_MAIL | prio[lvl], line);
	} else {
		int n;
		/* journald reads a leading <N> as the line's priority (SyslogLevelPrefix), so
		 * that journalctl -p err finds the errors. */
		char pfx[8] = "";
		if (log_journal)
			snprintf(pfx, sizeof pfx, "<%d>", prio[lvl]);
		if (qid)
			n = snprintf(line, sizeof line, "%s%s[%ld]: %s: qid=%s %s\n", pfx, log_prog,
			             (long)getpid(), names[lvl], qid, msg);
		else
			n = snprintf(line, sizeof line, "%s%s[%ld]: %s: %s\n", pfx, log_prog,
			             (long)getpid(), names[lvl], msg);
		if (n < 0)
			n = 0;
		if ((size_t)n >= sizeof line) {
			n = sizeof line - 1;
			line[n - 1] = '\n';
		}
		ssize_t w = write(STDERR_FILENO, line, (size_t)n);
		(void)w; /* nowhere left to report a failed log write */
	}
	errno = saved;
}

#define LOG_FN(fn, lvl)                                                                            \
	void fn(const char *qid, const char *fmt, ...)                                             \
	{                                                                                          \
		va_list ap;                                                                        \
		va_start(ap, fmt);                                                                 \
		log_emit(lvl, qid, fmt, ap);                                                       \
		va_end(ap);                                                                        \
	}
LOG_FN(log_debug, LOG_LVL_DEBUG)
LOG_FN(log_info, LOG_LVL_INFO)
LOG_FN(log_warn, LOG_LVL_WARN)
LOG_FN(log_error, LOG_LVL_ERROR)

void log_audit(const char *qid, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_emit(LOG_LVL_INFO, qid, fmt, ap);
	va_end(ap);
	if (log_tgt == LOG_TO_SYSLOG)
		return; /* log_emit sent it there already */
	/* An administrator's command logs to its own terminal; the mail log must have it too,
	 * with who did it. */
	char raw[2048], msg[2048];
	va_start(ap, fmt);
	vsnprintf(raw, sizeof raw, fmt, ap);
	va_end(ap);
	log_escape(msg, sizeof msg, raw);
	char line[4352];
	if (qid)
		snprintf(line, sizeof line, "info: qid=%s uid=%ld %s", qid, (long)log_caller_uid,
		         msg);
	else
		snprintf(line, sizeof line, "info: uid=%ld %s", (long)log_caller_uid, msg);
	log_sys_send(LOG_MAIL | LOG_NOTICE, line);
}

void die_temp(const char *qid, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_emit(LOG_LVL_ERROR, qid, fmt, ap);
	va_end(ap);
	exit(EXIT_TEMPFAIL);
}

void die_perm(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_emit(LOG_LVL_ERROR, NULL, fmt, ap);
	va_end(ap);
	exit(code);
}

void log_panic(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_emit(LOG_LVL_ERROR, NULL, fmt, ap);
	va_end(ap);
	abort();
}
