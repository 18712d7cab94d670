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

#include "log.h"
#include "util.h"

static const char *trace_prog = "spoold";

void trace_set_prog(const char *prog)
{
	const char *slash = strrchr(prog, '/');
	trace_prog = slash ? slash + 1 : prog;
}

void trace_add(int dirfd, const char *qid, const char *fmt, ...)
{
	char ev[3072];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ev, sizeof ev, fmt, ap);
	va_end(ap);
	int64_t us = now_us_wall();
	char line[3300];
	int n = snprintf(line, sizeof line, "%lld.%03lld %s %s\n", (long long)(us / 1000000),
	                 (long long)(us / 1000 % 1000), trace_prog, ev);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof line) {
		n = sizeof line - 1;
		line[n - 1] = '\n';
	}
	int fd =
	    openat(dirfd, "trace", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
	if (fd < 0) {
		log_warn(qid, "cannot append to trace: %s", strerror(errno));
		return;
	}
	/* One write of one line: O_APPEND keeps concurrent lines whole. */
	if (write_all(fd, line, (size_t)n) < 0)
		log_warn(qid, "cannot append to trace: %s", strerror(errno));
	close(fd);
}
