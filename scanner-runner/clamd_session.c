/*
 * clamd_session - clamd sessions (see clamd.h): every request for one message over one
 * connection, zFILDES requests pipelined on a unix socket. Only a fast path: whatever
 * goes wrong in a session ends it, and the rest goes through clamd.c's per-request path,
 * so every reply mapping and the failover are those of clamd.c.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clamd.h"
#include "clamd_int.h"
#include "util.h"

/*
 * Sessions. One connection carries every request for one message: "zIDSESSION\0" once,
 * then a zFILDES or zINSTREAM per part, each answered "<id>: <reply>\0" with ids counting
 * from 1, and "zEND\0" at the end. This saves a connect, an accept and a clamd thread
 * hand-off per part. It is only a fast path: whatever goes wrong in a session closes it,
 * and the part is scanned again by the one-request-per-connection path above, so every
 * error mapping and the failover stay exactly the same.
 */
void clamd_session_init(struct clamd_session *cs, char *const *addrs,
                        const struct clamd_policy *pol)
{
	memset(cs, 0, sizeof *cs);
	cs->s = -1;
	cs->addrs = addrs;
	cs->pol = pol;
}

void clamd_session_close(struct clamd_session *cs)
{
	static const char end[] = "zEND";

	if (cs->s < 0)
		return;
	/* Best effort and never waiting: clamd ends the session on zEND or on the close. */
	(void)send(cs->s, end, sizeof end, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(cs->s);
	cs->s = -1;
}

/* Open the session on the first address that accepts a connection, from cs->at on.
 * 0, or -1 (no session; the caller uses the per-request path). */
static int clamd_session_open(struct clamd_session *cs, int timeout_ms)
{
	static const char cmd[] = "zIDSESSION";
	struct clamd_result r;

	clamd_result_reset(&r, "");

	for (; cs->addrs != NULL && cs->addrs[cs->at] != NULL; cs->at++) {
		int64_t deadline = now_ms_monotonic() + timeout_ms;
		int s;

		if (!clamd_addr_usable(cs->addrs, cs->at) ||
		    clamd_addr_parse(cs->addrs[cs->at], &cs->a, &r) < 0)
			continue;
		s = clamd_open(&cs->a, cs->pol, deadline, &r);
		if (s < 0) {
			/* The session moves on to the next address: the pool hears of this one. */
			if (cs->on_fail != NULL)
				cs->on_fail(cs->fail_ctx, cs->addrs[cs->at], &r);
			continue;
		}
		if (clamd_send_all(s, cmd, sizeof cmd, deadline, &r) != 0) {
			if (cs->on_fail != NULL)
				cs->on_fail(cs->fail_ctx, cs->addrs[cs->at], &r);
			close(s);
			continue;
		}
		cs->s = s;
		cs->next_id = 1;
		return 0;
	}
	return -1;
}

/* Read one "<id>: <reply>\0" of the session and check its id; the reply, without the
 * id, goes into line (CLAMD_REPLY_MAX bytes). 0, or -1 with r set. */
static int clamd_session_reply(struct clamd_session *cs, int64_t deadline, char *line,
                               struct clamd_result *r)
{
	char buf[CLAMD_REPLY_MAX], want[24];
	size_t n = 0, len, wl;
	const char *nul = NULL;

	while (nul == NULL) {
		ssize_t k;

		if (n == sizeof buf)
			return clamd_fail(r, V_ERROR, "reply too long");
		k = recv(cs->s, buf + n, sizeof buf - n, 0);
		if (k > 0) {
			nul = memchr(buf + n, '\0', (size_t)k);
			n += (size_t)k;
			continue;
		}
		if (k == 0)
			return clamd_fail(r, V_ERROR, "session closed");
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return clamd_fail(r, V_ERROR, "recv: %s", strerror(errno));
		if (clamd_wait(cs->s, POLLIN, deadline, r) < 0)
			return -1;
	}
	len = (size_t)(nul - buf);
	/* We send one request at a time: anything after its reply is not clamd's protocol. */
	if (len + 1 != n)
		return clamd_fail(r, V_ERROR, "more than one reply in a session");
	wl = (size_t)snprintf(want, sizeof want, "%u: ", cs->next_id);
	if (len < wl || memcmp(buf, want, wl) != 0)
		return clamd_fail(r, V_ERROR, "session reply for another request");
	while (len > wl && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		len--;
	return clamd_line_copy(line, buf + wl, len - wl, r);
}

/* One request in the open session. 0 on a verdict, -1 otherwise (r set). */
static int clamd_session_request(struct clamd_session *cs, int fd, const struct stat *st,
                                 int timeout_ms, struct clamd_result *r)
{
	char line[CLAMD_REPLY_MAX];
	int64_t deadline = now_ms_monotonic() + timeout_ms;
	int sent;

	clamd_result_reset(r, cs->addrs[cs->at]);
	if (clamd_too_large(&cs->a, cs->pol, (uint64_t)st->st_size, r) < 0)
		return -1;
	if (cs->a.is_unix)
		sent = clamd_fildes_send(cs->s, fd, deadline, r);
	else
		sent = clamd_instream_send(cs->s, fd, clamd_stream_limit(cs->pol), deadline, r);
	/* clamd refusing or closing mid-request: leave it to the per-request path. */
	if (sent != 0)
		return -1;
	if (clamd_session_reply(cs, deadline, line, r) < 0)
		return -1;
	cs->next_id++;
	return clamd_reply_parse(line, r);
}

int clamd_session_scan_fd(struct clamd_session *cs, int fd, int timeout_ms, struct clamd_result *r)
{
	struct stat st;

	clamd_result_reset(r, "");
	if (timeout_ms <= 0)
		return clamd_fail(r, V_ERROR, "bad timeout %d ms", timeout_ms);
	if (fstat(fd, &st) < 0)
		return clamd_fail(r, V_ERROR, "fstat: %s", strerror(errno));
	if (!S_ISREG(st.st_mode))
		return clamd_fail(r, V_ERROR, "not a regular file");
	if (cs->s < 0 && !cs->failed && clamd_session_open(cs, timeout_ms) < 0) {
		/* No address took a session: the per-request path tries them all and says
		 * why each failed. */
		cs->failed = 1;
		cs->at = 0;
	}
	if (cs->s >= 0) {
		if (clamd_session_request(cs, fd, &st, timeout_ms, r) == 0)
			return 0;
		/* Whatever the session said that was not a verdict, the session ends here. */
		clamd_session_close(cs);
		cs->failed = 1;
		/* A clamd that let a whole timeout pass is not asked again for this message (the
		 * per-request path would wait as long once more): the next address is. */
		if (strcmp(r->reply, "timeout") == 0) {
			cs->last = *r;
			if (cs->on_fail != NULL)
				cs->on_fail(cs->fail_ctx, cs->addrs[cs->at], r);
			cs->at++;
		}
	}
	if (cs->addrs == NULL || cs->addrs[cs->at] == NULL) {
		if (cs->at == 0)
			return clamd_fail(r, V_ERROR, "no clamd address");
		*r = cs->last;
		return -1;
	}
	return clamd_scan_fd_from_cb(cs->addrs, cs->at, fd, cs->pol, timeout_ms, r, cs->on_fail,
	                             cs->fail_ctx);
}

/*
 * Pipelined zFILDES in the open session: every request goes out first, then the replies
 * are read in whatever order clamd's threads finish them (clamd answers session requests
 * asynchronously, tagged with their ids). The replies are a few dozen bytes each, so
 * sending them all before reading cannot fill clamd's side. Sets final[i] for each part
 * that got a verdict. Returns 0 while the session is sound, -1 when it must end: a send
 * failed, the connection closed, the deadline passed (the parts without a reply then say
 * "timeout"), a reply did not parse, or one was not a verdict.
 */
static int clamd_session_pipeline(struct clamd_session *cs, const int *fds, size_t n,
                                  int timeout_ms, struct clamd_result *rs, int *final)
{
	int64_t deadline = now_ms_monotonic() + timeout_ms;
	unsigned first = cs->next_id;
	char buf[2 * CLAMD_REPLY_MAX], line[CLAMD_REPLY_MAX];
	size_t have = 0, got = 0;
	int sound = 1;

	/* Every result starts as an error, so that one never sent reads as such. */
	for (size_t i = 0; i < n; i++)
		clamd_result_reset(&rs[i], cs->addrs[cs->at]);
	for (size_t i = 0; i < n; i++)
		if (clamd_fildes_send(cs->s, fds[i], deadline, &rs[i]) != 0)
			return -1;
	cs->next_id = first + (unsigned)n;
	while (got < n) {
		char *nul = memchr(buf, '\0', have), *end;
		unsigned long id;
		size_t len;

		if (nul == NULL) {
			struct clamd_result w;
			ssize_t k;

			if (have == sizeof buf)
				return -1; /* a reply longer than any clamd sends */
			k = recv(cs->s, buf + have, sizeof buf - have, 0);
			if (k > 0) {
				have += (size_t)k;
				continue;
			}
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
				/* clamd_wait fills in only the verdict and the reply: the
				 * address and the rest must be set, or a timeout copies
				 * indeterminate fields into every unanswered result. */
				clamd_result_reset(&w, cs->addrs[cs->at]);
				if (clamd_wait(cs->s, POLLIN, deadline, &w) >= 0)
					continue;
				for (size_t i = 0; i < n; i++)
					if (!final[i])
						rs[i] = w; /* "timeout" (or the poll error) */
			}
			return -1;
		}
		len = (size_t)(nul - buf);
		/* Digits only: strtoul alone would take " +1" or "-1" as well. */
		if (buf[0] < '0' || buf[0] > '9')
			return -1;
		errno = 0;
		id = strtoul(buf, &end, 10);
		if (errno != 0 || end[0] != ':' || end[1] != ' ' || id < first || id - first >= n ||
		    final[id - first])
			return -1; /* not a reply to one of ours, or a second one */
		len -= (size_t)(end + 2 - buf);
		while (len > 0 && (end[2 + len - 1] == '\n' || end[2 + len - 1] == '\r'))
			len--;
		/* Up to 2 * CLAMD_REPLY_MAX bytes are buffered, so a reply may be longer than
		 * line: clamd_line_copy refuses it, and that part is an error. */
		if (clamd_line_copy(line, end + 2, len, &rs[id - first]) == 0 &&
		    clamd_reply_parse(line, &rs[id - first]) == 0)
			final[id - first] = 1;
		else
			sound = 0; /* that part is asked again, outside the session */
		got++;
		have -= (size_t)(nul + 1 - buf);
		memmove(buf, nul + 1, have);
	}
	return sound && have == 0 ? 0 : -1;
}

/* One batch of at most CLAMD_SESSION_BATCH parts. */
static void clamd_session_scan_batch(struct clamd_session *cs, const int *fds, size_t n,
                                     int timeout_ms, struct clamd_result *rs)
{
	int final[CLAMD_SESSION_BATCH];
	int todo_fd[CLAMD_SESSION_BATCH];
	size_t todo_ix[CLAMD_SESSION_BATCH], ntodo = 0;
	struct clamd_result todo_r[CLAMD_SESSION_BATCH];

	memset(final, 0, sizeof final);
	for (size_t i = 0; i < n; i++) {
		struct stat st;

		clamd_result_reset(&rs[i], "");
		if (timeout_ms <= 0)
			final[i] =
			    clamd_fail(&rs[i], V_ERROR, "bad timeout %d ms", timeout_ms) != 0;
		else if (fstat(fds[i], &st) < 0)
			final[i] = clamd_fail(&rs[i], V_ERROR, "fstat: %s", strerror(errno)) != 0;
		else if (!S_ISREG(st.st_mode))
			final[i] = clamd_fail(&rs[i], V_ERROR, "not a regular file") != 0;
		else if ((uint64_t)st.st_size > cs->pol->max_file_size)
			final[i] = clamd_fail(&rs[i], V_UNSCANNABLE, "over max_file_size") != 0;
		else {
			todo_ix[ntodo] = i;
			todo_fd[ntodo++] = fds[i];
		}
	}
	if (ntodo > 1 && cs->s < 0 && !cs->failed && clamd_session_open(cs, timeout_ms) < 0) {
		cs->failed = 1;
		cs->at = 0;
	}
	/* Only FILDES is pipelined: an INSTREAM ties up the connection for its whole upload,
	 * so over tcp the parts go one by one (still in one session). */
	if (ntodo > 1 && cs->s >= 0 && cs->a.is_unix) {
		int tfinal[CLAMD_SESSION_BATCH];

		memset(tfinal, 0, sizeof tfinal);
		if (clamd_session_pipeline(cs, todo_fd, ntodo, timeout_ms, todo_r, tfinal) < 0) {
			int timed_out = 0;

			clamd_session_close(cs);
			cs->failed = 1;
			for (size_t j = 0; j < ntodo; j++)
				if (!tfinal[j] && strcmp(todo_r[j].reply, "timeout") == 0) {
					cs->last = todo_r[j];
					timed_out = 1;
				}
			/* As for one request: a clamd that let the deadline pass is not asked
			 * again for this message. */
			if (timed_out) {
				if (cs->on_fail != NULL)
					cs->on_fail(cs->fail_ctx, cs->addrs[cs->at], &cs->last);
				cs->at++;
			}
		}
		for (size_t j = 0; j < ntodo; j++)
			if (tfinal[j]) {
				rs[todo_ix[j]] = todo_r[j];
				final[todo_ix[j]] = 1;
			}
	}
	for (size_t i = 0; i < n; i++)
		if (!final[i])
			clamd_session_scan_fd(cs, fds[i], timeout_ms, &rs[i]);
}

void clamd_session_scan_fds(struct clamd_session *cs, const int *fds, size_t n, int timeout_ms,
                            struct clamd_result *rs)
{
	for (size_t off = 0; off < n; off += CLAMD_SESSION_BATCH)
		clamd_session_scan_batch(
		    cs, fds + off, n - off < CLAMD_SESSION_BATCH ? n - off : CLAMD_SESSION_BATCH,
		    timeout_ms, rs + off);
}
