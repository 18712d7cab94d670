/*
 * trace - see trace.h.
 */
#include "trace.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "entry_names.h"
#include "log.h"
#include "util.h"

static const char *trace_prog = "spoold";

void trace_set_prog(const char *prog)
{
	const char *slash = strrchr(prog, '/');
	trace_prog = slash ? slash + 1 : prog;
}

/* Append the ready lines in one write: O_APPEND keeps them whole among other writers. */
static void trace_write(int dirfd, const char *qid, const char *lines, size_t n)
{
	/* 0660: every stage appends to the one trace, and in a separated spool they are
	 * different users of one group (umask 027 makes it 0640 when one user runs all). The
	 * trace is a record for people, never trusted by a stage. */
	int fd = openat(dirfd, ENTRY_TRACE, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
	                0660);
	if (fd < 0) {
		log_warn(qid, "cannot append to trace: %s", strerror(errno));
		return;
	}
	if (write_all(fd, lines, n) < 0)
		log_warn(qid, "cannot append to trace: %s", strerror(errno));
	close(fd);
}

/* One line "<time> <prog> <ev>\n" into line (TRACE_LINE_MAX bytes); its length. */
#define TRACE_LINE_MAX 3300
static size_t trace_line(char *line, int64_t us, const char *ev, size_t evlen)
{
	int n = snprintf(line, TRACE_LINE_MAX, "%lld.%03lld %s %.*s\n", (long long)(us / 1000000),
	                 (long long)(us / 1000 % 1000), trace_prog, (int)evlen, ev);
	if (n < 0)
		return 0;
	if ((size_t)n >= TRACE_LINE_MAX) {
		n = TRACE_LINE_MAX - 1;
		line[n - 1] = '\n';
	}
	return (size_t)n;
}

void trace_add(int dirfd, const char *qid, const char *fmt, ...)
{
	char ev[3072];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ev, sizeof ev, fmt, ap);
	va_end(ap);
	trace_add_lines(dirfd, qid, ev);
}

void trace_add_lines(int dirfd, const char *qid, const char *events)
{
	int64_t us = now_us_wall();
	struct buf b;
	buf_init(&b);
	for (const char *p = events; *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		char line[TRACE_LINE_MAX];
		size_t n = trace_line(line, us, p, len > 3072 ? 3072 : len);
		buf_add(&b, line, n);
		p += len + (nl != NULL);
	}
	if (b.len > 0)
		trace_write(dirfd, qid, b.data, b.len);
	buf_free(&b);
}
