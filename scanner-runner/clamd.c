/*
 * clamd - a clamd protocol client (see clamd.h): addresses, connections, one request
 * per connection, failover, and the commands (VERSION, PING). Sessions, which reuse the
 * pieces declared in clamd_int.h, are in clamd_session.c.
 *
 * Every socket is non-blocking, so that each wait (connect, send, reply) is a poll()
 * against one deadline for the whole exchange: a wedged clamd costs at most timeout_ms.
 * One request per connection; clamd closes the connection after its reply, and we read
 * up to that close so that a second reply, or a reply without its NUL, is noticed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "clamd.h"
#include "clamd_int.h"
#include "util.h"

/* File bytes per INSTREAM chunk: few syscalls, still a modest stack buffer. */
#define CLAMD_CHUNK 65536
_Static_assert(CLAMD_REPLY_MAX > sizeof(((struct clamd_result *)0)->reply),
               "a reply line buffer must hold a whole clamd_result.reply");

_Static_assert(sizeof(((struct clamd_addr *)0)->path) ==
                   sizeof(((struct sockaddr_un *)0)->sun_path),
               "a unix address path is a sun_path");

int clamd_fail(struct clamd_result *r, enum verdict v, const char *fmt, ...)
{
	va_list ap;

	r->verdict = v;
	r->virus[0] = '\0';
	va_start(ap, fmt);
	/* Truncation only shortens a diagnostic. */
	vsnprintf(r->reply, sizeof r->reply, fmt, ap);
	va_end(ap);
	return -1;
}

/*
 * Copy the len bytes of a reply (no NUL among them) into line, which is CLAMD_REPLY_MAX
 * bytes, and terminate it. Every reply line goes through here: the receive buffers are
 * larger than line (a pipelined session reads up to two replies at once), so a reply
 * that fits a receive buffer may still not fit. Too long is an error, never cut short:
 * a truncated reply could parse as something else. 0, or -1 with r set.
 */
int clamd_line_copy(char *line, const char *src, size_t len, struct clamd_result *r)
{
	if (len >= CLAMD_REPLY_MAX)
		return clamd_fail(r, V_ERROR, "reply too long (%zu bytes)", len);
	memcpy(line, src, len);
	line[len] = '\0';
	return 0;
}

void clamd_result_reset(struct clamd_result *r, const char *addr)
{
	memset(r, 0, sizeof *r);
	/* Fail closed: whatever path leaves early without a parsed reply is an error. */
	r->verdict = V_ERROR;
	snprintf(r->addr, sizeof r->addr, "%s", addr ? addr : "");
}

void clamd_policy_init(struct clamd_policy *p, const struct conf_scanner *sc)
{
	memset(p, 0, sizeof *p);
	p->stream_max = sc->stream_max_length;
	p->max_file_size = sc->max_file_size;
	for (size_t i = 0; i < sc->n_clamd_peer_uids && p->n_peer_uids < CLAMD_PEER_MAX; i++)
		p->peer_uids[p->n_peer_uids++] = sc->clamd_peer_uids[i];
	/* Trust decision: by default also our own uid. A process of our uid can already
	 * write our spool and our verdicts, so trusting it as clamd gives it nothing; and it
	 * lets an unprivileged test run its own clamd. An explicit peer_user is exact. */
	if (sc->clamd_peer_default && p->n_peer_uids < CLAMD_PEER_MAX)
		p->peer_uids[p->n_peer_uids++] = geteuid();
}

/* Is the address at addrs[i] one failover may use? Not a tcp address after a unix one:
 * anyone who can bind a loopback port can answer there, so a unix socket that fails
 * must not fall through to it (failover stays within its trust class). */
int clamd_addr_usable(char *const *addrs, size_t i)
{
	if (strncmp(addrs[i], "tcp:", 4) != 0)
		return 1;
	for (size_t j = 0; j < i; j++)
		if (strncmp(addrs[j], "unix:", 5) == 0)
			return 0;
	return 1;
}

/* Milliseconds left before deadline, 0 once it has passed. */
static int clamd_remaining(int64_t deadline)
{
	int64_t left = deadline - now_ms_monotonic();

	if (left <= 0)
		return 0;
	return left > INT_MAX ? INT_MAX : (int)left;
}

/* Wait for events on s until the deadline. Returns the revents (> 0), or -1 with r set:
 * "timeout", or the poll error. */
int clamd_wait(int s, short events, int64_t deadline, struct clamd_result *r)
{
	for (;;) {
		struct pollfd p = {.fd = s, .events = events};
		int left = clamd_remaining(deadline);
		int n;

		if (left == 0)
			return clamd_fail(r, V_ERROR, "timeout");
		n = poll(&p, 1, left);
		if (n > 0)
			return p.revents;
		/* n == 0: poll rounds, so loop and let clamd_remaining decide. */
		if (n < 0 && errno != EINTR)
			return clamd_fail(r, V_ERROR, "poll: %s", strerror(errno));
	}
}

/* Has the peer said something (or hung up) already? A real clamd only speaks before the
 * end of a request to refuse it ("INSTREAM size limit exceeded. ERROR"), so a sender
 * that notices stops sending and reads the reply. */
static int clamd_peer_spoke(int s)
{
	struct pollfd p = {.fd = s, .events = POLLIN};

	/* A failed zero-timeout poll tells nothing; the next send or recv reports errors. */
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

/* "unix:/path" or "tcp:HOST:PORT" / "tcp:[V6]:PORT". 0, or -1 with r set. */
int clamd_addr_parse(const char *addr, struct clamd_addr *a, struct clamd_result *r)
{
	const char *host, *hend, *port;
	uint64_t pnum;

	memset(a, 0, sizeof *a);
	if (addr == NULL)
		return clamd_fail(r, V_ERROR, "bad address: none");
	if (strncmp(addr, "unix:", 5) == 0) {
		const char *path = addr + 5;

		/* Keep room for the NUL: a path filling sun_path exactly is legal on Linux but
		 * not portable, and nobody needs it. */
		if (*path == '\0' || strlen(path) >= sizeof a->path)
			return clamd_fail(r, V_ERROR, "bad address (unix path empty or too long)");
		a->is_unix = 1;
		memcpy(a->path, path, strlen(path) + 1);
		return 0;
	}
	if (strncmp(addr, "tcp:", 4) != 0)
		return clamd_fail(r, V_ERROR, "bad address (want unix:/path or tcp:host:port)");
	host = addr + 4;
	if (*host == '[') {
		host++;
		hend = strchr(host, ']');
		if (hend == NULL || hend[1] != ':')
			return clamd_fail(r, V_ERROR, "bad address (want tcp:[v6addr]:port)");
		port = hend + 2;
	} else {
		hend = strrchr(host, ':');
		/* An unbracketed IPv6 address is ambiguous: refuse rather than guess. */
		if (hend == NULL || memchr(host, ':', (size_t)(hend - host)) != NULL)
			return clamd_fail(r, V_ERROR, "bad address (want tcp:host:port)");
		port = hend + 1;
	}
	if (hend == host || (size_t)(hend - host) >= sizeof a->host)
		return clamd_fail(r, V_ERROR, "bad address (host empty or too long)");
	if (strlen(port) >= sizeof a->port || parse_u64(port, &pnum) < 0 || pnum == 0 ||
	    pnum > 65535)
		return clamd_fail(r, V_ERROR, "bad address (port not 1..65535)");
	memcpy(a->host, host, (size_t)(hend - host));
	memcpy(a->port, port, strlen(port) + 1);
	return 0;
}

/* Connect the non-blocking socket s and wait for the outcome. 0, or -1 with r set. */
static int clamd_connect(int s, const struct sockaddr *sa, socklen_t salen, int64_t deadline,
                         struct clamd_result *r)
{
	int err = 0;
	socklen_t elen = sizeof err;

	if (connect(s, sa, salen) == 0)
		return 0;
	/* EINTR: the connection goes on asynchronously, exactly as for EINPROGRESS. A unix
	 * socket with a full backlog gives EAGAIN: clamd is swamped, try the next one. */
	if (errno != EINPROGRESS && errno != EINTR)
		return clamd_fail(r, V_ERROR, "connect: %s", strerror(errno));
	if (clamd_wait(s, POLLOUT, deadline, r) < 0)
		return -1;
	if (getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
		return clamd_fail(r, V_ERROR, "getsockopt SO_ERROR: %s", strerror(errno));
	if (err != 0)
		return clamd_fail(r, V_ERROR, "connect: %s", strerror(err));
	return 0;
}

/*
 * Trust decision: is the process that listens on the connected unix socket s one that
 * may judge our mail? SO_PEERCRED gives the credentials the listener had when it called
 * listen(), which it cannot forge; a socket file anyone could replace (a stale path, a
 * writable directory) is caught here, before a byte is sent. 0, or -1 with r set.
 */
static int clamd_peer_check(int s, const struct clamd_addr *a, const struct clamd_policy *pol,
                            struct clamd_result *r)
{
	struct ucred cred;
	socklen_t len = sizeof cred;

	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return clamd_fail(r, V_ERROR, "getsockopt SO_PEERCRED %s: %s", a->path,
		                  strerror(errno));
	if (len != sizeof cred)
		return clamd_fail(r, V_ERROR, "getsockopt SO_PEERCRED %s: short answer", a->path);
	for (size_t i = 0; i < pol->n_peer_uids; i++)
		if (cred.uid == pol->peer_uids[i])
			return 0;
	return clamd_fail(r, V_ERROR,
	                  "untrusted peer on %s: uid %lu (pid %ld) is not a peer_user; nothing "
	                  "sent",
	                  a->path, (unsigned long)cred.uid, (long)cred.pid);
}

/* Open a connected, non-blocking, close-on-exec socket to a; a unix peer must pass
 * clamd_peer_check. Returns it, or -1 with r set. */
int clamd_open(const struct clamd_addr *a, const struct clamd_policy *pol, int64_t deadline,
               struct clamd_result *r)
{
	struct addrinfo hints, *res = NULL, *ai;
	int s = -1, rc;

	if (a->is_unix) {
		struct sockaddr_un sun;

		memset(&sun, 0, sizeof sun);
		sun.sun_family = AF_UNIX;
		memcpy(sun.sun_path, a->path, strlen(a->path) + 1);
		s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (s < 0)
			return clamd_fail(r, V_ERROR, "socket: %s", strerror(errno));
		if (clamd_connect(s, (struct sockaddr *)&sun, sizeof sun, deadline, r) < 0 ||
		    clamd_peer_check(s, a, pol, r) < 0) {
			close(s);
			return -1;
		}
		return s;
	}

	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	/* No AI_ADDRCONFIG: it hides 127.0.0.1 on a host whose only interface is loopback. */
	hints.ai_flags = AI_NUMERICSERV;
	rc = getaddrinfo(a->host, a->port, &hints, &res);
	if (rc != 0)
		return clamd_fail(r, V_ERROR, "getaddrinfo %s: %s", a->host,
		                  rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
	clamd_fail(r, V_ERROR, "getaddrinfo %s: no address", a->host);
	/* "localhost" may give ::1 first while clamd listens on 127.0.0.1 only: try each. */
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
		           ai->ai_protocol);
		if (s < 0) {
			clamd_fail(r, V_ERROR, "socket: %s", strerror(errno));
			continue;
		}
		/* No Nagle: a request is a small command, then chunks, then a small end
		 * marker; with Nagle each small write after the first waits for clamd's
		 * delayed ACK (40 ms on Linux): about 40 ms per part over tcp, a third of
		 * the throughput (make bench-farm). A failure only costs speed: ignored. */
		int one = 1;
		(void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (clamd_connect(s, ai->ai_addr, ai->ai_addrlen, deadline, r) == 0)
			break;
		close(s);
		s = -1;
		/* The deadline is for the whole exchange, not per address. */
		if (clamd_remaining(deadline) == 0) {
			if (ai->ai_next != NULL)
				clamd_fail(r, V_ERROR, "timeout");
			break;
		}
	}
	freeaddrinfo(res);
	return s;
}

/*
 * After a send on s failed with errno (what: the call, for the message): 0 to send again
 * (interrupted, or there is room now), 1 when the peer spoke or went away (r holds the
 * send error, if any: the caller reads what the peer said), -1 with r set on an error.
 * One policy for both senders (bytes, and the descriptor's byte).
 */
static int clamd_send_failed(int s, const char *what, int64_t deadline, struct clamd_result *r)
{
	if (errno == EINTR)
		return 0;
	if (errno == EPIPE || errno == ECONNRESET) {
		clamd_fail(r, V_ERROR, "%s: %s", what, strerror(errno));
		return 1;
	}
	if (errno != EAGAIN && errno != EWOULDBLOCK)
		return clamd_fail(r, V_ERROR, "%s: %s", what, strerror(errno));
	/* Blocked: wait for room, but also for a refusal, which clamd sends and then stops
	 * reading; waiting only for room would then wait for the timeout. */
	int ev = clamd_wait(s, POLLOUT | POLLIN, deadline, r);
	if (ev < 0)
		return -1;
	return (ev & (POLLIN | POLLHUP | POLLERR)) ? 1 : 0;
}

/*
 * Send all n bytes, through short writes and EINTR. Returns 0 when all was sent, -1
 * with r set on an error, or 1 when the peer spoke or went away before we were done
 * (r then holds the send error, if any): the caller reads what the peer said.
 */
int clamd_send_all(int s, const void *p, size_t n, int64_t deadline, struct clamd_result *r)
{
	const char *c = p;

	while (n > 0) {
		ssize_t k = send(s, c, n, MSG_NOSIGNAL);
		int ev;

		if (k >= 0) {
			c += k;
			n -= (size_t)k;
			continue;
		}
		ev = clamd_send_failed(s, "send", deadline, r);
		if (ev != 0)
			return ev;
	}
	return 0;
}

/* zFILDES: the command, then our descriptor with one byte of its own. 0, -1, or 1 as
 * for clamd_send_all. */
int clamd_fildes_send(int s, int fd, int64_t deadline, struct clamd_result *r)
{
	static const char cmd[] = "zFILDES"; /* sizeof includes the NUL terminator */
	char dummy = '\0';
	struct iovec iov = {.iov_base = &dummy, .iov_len = 1};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg;
	struct cmsghdr *cm;
	int rc;

	rc = clamd_send_all(s, cmd, sizeof cmd, deadline, r);
	if (rc != 0)
		return rc;

	/* The descriptor must ride on a byte sent after the command: attached to the
	 * command bytes themselves, clamd 1.4 answers "PROTOCOL ERROR: ancillary data sent
	 * without FILDES. ERROR". This is what clamdscan does too. */
	memset(&u, 0, sizeof u);
	memset(&msg, 0, sizeof msg);
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = u.buf;
	msg.msg_controllen = sizeof u.buf;
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof fd);

	for (;;) {
		ssize_t k = sendmsg(s, &msg, MSG_NOSIGNAL);
		int ev;

		if (k == 1)
			return 0;
		if (k >= 0) /* a one-byte stream send is all or nothing */
			return clamd_fail(r, V_ERROR, "sendmsg: sent %zd of 1 byte", k);
		ev = clamd_send_failed(s, "sendmsg", deadline, r);
		if (ev != 0)
			return ev;
	}
}

/*
 * zINSTREAM: the command, then the file from offset 0 in length-prefixed chunks, then a
 * zero length. Returns 0, -1, or 1 as for clamd_send_all. If the file turns out longer
 * than stream_max (it grew since fstat), we stop before the chunk that would pass the
 * limit and return -1 with V_UNSCANNABLE, without the terminator: clamd never scans a
 * stream that was not terminated, so the part it got is never called clean.
 */
int clamd_instream_send(int s, int fd, uint64_t stream_max, int64_t deadline,
                        struct clamd_result *r)
{
	static const char cmd[] = "zINSTREAM";
	static const unsigned char end[4] = {0, 0, 0, 0};
	unsigned char chunk[4 + CLAMD_CHUNK];
	uint64_t off = 0;
	int rc;

	rc = clamd_send_all(s, cmd, sizeof cmd, deadline, r);
	if (rc != 0)
		return rc;
	for (;;) {
		/* pread: the caller's file offset is theirs; we never move it. */
		ssize_t n = pread(fd, chunk + 4, CLAMD_CHUNK, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return clamd_fail(r, V_ERROR, "pread: %s", strerror(errno));
		}
		if (n == 0)
			break;
		/* off <= stream_max holds here, so this cannot wrap. */
		if ((uint64_t)n > stream_max - off)
			return clamd_fail(r, V_UNSCANNABLE, "over StreamMaxLength");
		/* Sends that never block never poll: check the clock per chunk. */
		if (clamd_remaining(deadline) == 0)
			return clamd_fail(r, V_ERROR, "timeout");
		if (clamd_peer_spoke(s))
			return 1;
		chunk[0] = (unsigned char)((uint32_t)n >> 24);
		chunk[1] = (unsigned char)((uint32_t)n >> 16);
		chunk[2] = (unsigned char)((uint32_t)n >> 8);
		chunk[3] = (unsigned char)n;
		rc = clamd_send_all(s, chunk, 4 + (size_t)n, deadline, r);
		if (rc != 0)
			return rc;
		off += (uint64_t)n;
	}
	if (clamd_peer_spoke(s))
		return 1;
	return clamd_send_all(s, end, sizeof end, deadline, r);
}

/*
 * Read clamd's reply up to the close of the connection (at most CLAMD_REPLY_MAX bytes)
 * and put its one line, NUL and trailing newlines stripped, into line (CLAMD_REPLY_MAX
 * bytes). 0, or -1 with r set.
 */
static int clamd_reply_read(int s, int64_t deadline, char *line, struct clamd_result *r)
{
	char buf[CLAMD_REPLY_MAX];
	size_t n = 0, len;
	const char *nul;

	for (;;) {
		ssize_t k;

		if (n == sizeof buf)
			return clamd_fail(r, V_ERROR, "reply too long: %.200s", buf);
		k = recv(s, buf + n, sizeof buf - n, 0);
		if (k > 0) {
			n += (size_t)k;
			continue;
		}
		if (k == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (clamd_wait(s, POLLIN, deadline, r) < 0)
				return -1;
			continue;
		}
		/* clamd closing while data of ours is still unread on its side (after a
		 * refusal) resets the connection; a complete reply that came first counts. */
		if (errno == ECONNRESET && memchr(buf, '\0', n) != NULL)
			break;
		return clamd_fail(r, V_ERROR, "recv: %s", strerror(errno));
	}
	if (n == 0)
		return clamd_fail(r, V_ERROR, "connection closed without reply");
	nul = memchr(buf, '\0', n);
	if (nul == NULL)
		return clamd_fail(r, V_ERROR, "reply without NUL terminator: %.*s",
		                  (int)(n > 200 ? 200 : n), buf);
	len = (size_t)(nul - buf);
	if (len + 1 != n)
		return clamd_fail(r, V_ERROR, "more than one reply: %.200s", buf);
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		len--;
	return clamd_line_copy(line, buf, len, r);
}

/* Length of the "stream: " or "fd[N]: " prefix that starts s, 0 if none. */
static size_t clamd_reply_prefix(const char *s)
{
	size_t i;

	if (strncmp(s, "stream: ", 8) == 0)
		return 8;
	if (strncmp(s, "fd[", 3) != 0)
		return 0;
	for (i = 3; s[i] >= '0' && s[i] <= '9'; i++)
		;
	if (i == 3 || strncmp(s + i, "]: ", 3) != 0)
		return 0;
	return i + 3;
}

static int clamd_ends_with(const char *s, size_t len, const char *suffix)
{
	size_t sl = strlen(suffix);

	return len >= sl && memcmp(s + len - sl, suffix, sl) == 0;
}

/* Does this ERROR reply say that a size or other limit stopped the scan? Such a file is
 * unscannable (retrying elsewhere gives the same), not a transient error. */
static int clamd_reply_is_limit(const char *s)
{
	static const char *const words[] = {
	    "limit exceeded",  /* "INSTREAM size limit exceeded. ERROR" */
	    "limits exceeded", /* "Heuristics.Limits.Exceeded..." */
	    "exceeded max",    /* libclamav: "Exceeded max scan size" and the like */
	    "limit reached",   /* libclamav: "Time limit reached" */
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(words); i++)
		if (strcasestr(s, words[i]) != NULL)
			return 1;
	return 0;
}

int clamd_reply_parse(const char *line, struct clamd_result *r)
{
	static const char limits[] = "Heuristics.Limits.Exceeded";
	size_t len = strlen(line), pre, i, nlen;
	const char *rest;

	r->virus[0] = '\0';
	snprintf(r->reply, sizeof r->reply, "%s", line);
	r->verdict = V_ERROR;
	if (len == 0)
		return clamd_fail(r, V_ERROR, "empty reply");
	/* Control bytes are not clamd talking: never parse past them. */
	for (i = 0; i < len; i++)
		if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
			return -1;
	/* Errors first: some have no "stream: " prefix ("INSTREAM size limit exceeded.
	 * ERROR", "No file descriptor received. ERROR"). */
	if (clamd_ends_with(line, len, " ERROR")) {
		r->verdict = clamd_reply_is_limit(line) ? V_UNSCANNABLE : V_ERROR;
		return -1;
	}
	/* A verdict only counts for the object we asked about: "stream" or "fd[N]". */
	pre = clamd_reply_prefix(line);
	if (pre == 0)
		return -1;
	rest = line + pre;
	if (strcmp(rest, "OK") == 0) {
		r->verdict = V_CLEAN;
		return 0;
	}
	if (!clamd_ends_with(rest, len - pre, " FOUND"))
		return -1;
	nlen = len - pre - strlen(" FOUND");
	if (nlen == 0 || rest[0] == ' ')
		return -1;
	/* A limit that stopped the scan, reported as a detection (AlertExceedsMax): the
	 * file was not fully scanned, so it is neither clean nor known infected. */
	if (strncmp(rest, limits, strlen(limits)) == 0) {
		r->verdict = V_UNSCANNABLE;
		return -1;
	}
	/* A name longer than virus[] is cut; the verdict stands. */
	snprintf(r->virus, sizeof r->virus, "%.*s", (int)nlen, rest);
	r->verdict = V_INFECTED;
	return 0;
}

/*
 * A new read-only open file description of the file open on fd, for zFILDES. Passing
 * fd itself would share its file offset with clamd, which moves it (clamd 1.4 leaves it
 * at 0), and after a timeout clamd may still be reading while our caller goes on; it
 * would also hand clamd write access if fd has it. Returns the descriptor, or -1 with r
 * set.
 */
static int clamd_reopen(int fd, const struct stat *st, struct clamd_result *r)
{
	char path[64];
	struct stat st2;
	int nfd;

	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	nfd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (nfd < 0)
		return clamd_fail(r, V_ERROR, "open %s: %s", path, strerror(errno));
	if (fstat(nfd, &st2) < 0) {
		clamd_fail(r, V_ERROR, "fstat %s: %s", path, strerror(errno));
		goto fail;
	}
	/* /proc is not what it should be (not mounted, or something else there). */
	if (st2.st_dev != st->st_dev || st2.st_ino != st->st_ino) {
		clamd_fail(r, V_ERROR, "open %s: not the same file", path);
		goto fail;
	}
	return nfd;
fail:
	close(nfd);
	return -1;
}

/* Is a file of size bytes too large for pol over a? Sets r (V_UNSCANNABLE) if so. */
int clamd_too_large(const struct clamd_addr *a, const struct clamd_policy *pol, uint64_t size,
                    struct clamd_result *r)
{
	/* Before connecting: an oversized file is never sent, not even in part. clamd would
	 * scan only its first MaxFileSize bytes (or skip it), and may then say OK. */
	if (size > pol->max_file_size)
		return clamd_fail(r, V_UNSCANNABLE, "over max_file_size");
	if (!a->is_unix && size > pol->stream_max)
		return clamd_fail(r, V_UNSCANNABLE, "over StreamMaxLength");
	return 0;
}

/* The most bytes a stream may carry, even if the file grows after the size check. */
uint64_t clamd_stream_limit(const struct clamd_policy *pol)
{
	return pol->stream_max < pol->max_file_size ? pol->stream_max : pol->max_file_size;
}

/* The start of every request: a fresh result naming addr, the deadline, and the parsed
 * address. -1 with r filled in on a bad timeout or address. */
static int clamd_request_begin(const char *addr, int timeout_ms, struct clamd_addr *a,
                               int64_t *deadline, struct clamd_result *r)
{
	clamd_result_reset(r, addr);
	if (timeout_ms <= 0)
		return clamd_fail(r, V_ERROR, "bad timeout %d ms", timeout_ms);
	*deadline = now_ms_monotonic() + timeout_ms;
	return clamd_addr_parse(addr, a, r) < 0 ? -1 : 0;
}

int clamd_scan_fd(const char *addr, int fd, const struct clamd_policy *pol, int timeout_ms,
                  struct clamd_result *r)
{
	struct clamd_addr a;
	struct stat st;
	char line[CLAMD_REPLY_MAX];
	int64_t deadline;
	int s = -1, own = -1, sent, rc = -1;

	if (clamd_request_begin(addr, timeout_ms, &a, &deadline, r) < 0)
		return -1;
	if (fstat(fd, &st) < 0)
		return clamd_fail(r, V_ERROR, "fstat: %s", strerror(errno));
	/* Parts are regular files; anything else (a FIFO would even block the reopen) is a
	 * caller bug, not something to scan. */
	if (!S_ISREG(st.st_mode))
		return clamd_fail(r, V_ERROR, "not a regular file");
	if (clamd_too_large(&a, pol, (uint64_t)st.st_size, r) < 0)
		return -1;
	if (a.is_unix) {
		own = clamd_reopen(fd, &st, r);
		if (own < 0)
			return -1;
	}

	r->contacted = 1;
	s = clamd_open(&a, pol, deadline, r);
	if (s < 0)
		goto out;
	if (a.is_unix)
		sent = clamd_fildes_send(s, own, deadline, r);
	else
		sent = clamd_instream_send(s, fd, clamd_stream_limit(pol), deadline, r);
	if (sent < 0)
		goto out;
	if (clamd_reply_read(s, deadline, line, r) < 0) {
		if (sent == 1 && strcmp(r->reply, "timeout") != 0) {
			/* A copy: r->reply is both the source and the destination here. */
			memcpy(line, r->reply, sizeof r->reply);
			clamd_fail(r, V_ERROR, "connection closed mid-request (%.400s)", line);
		}
		goto out;
	}
	rc = clamd_reply_parse(line, r);
	/* clamd scans only a complete request: a verdict before it is not about our file. */
	if (sent == 1 && rc == 0)
		rc = clamd_fail(r, V_ERROR, "reply before end of request: %.400s", line);
out:
	if (s >= 0)
		close(s);
	if (own >= 0)
		close(own);
	return rc;
}

/* Try addrs[from], addrs[from + 1]... until one gives a verdict, skipping the addresses
 * failover may not use. Each failure of a contacted address goes to on_fail; when all
 * fail and more than one was tried, r->reply lists every address and why, so that an
 * operator (and a degraded scanner's reason) sees each, not only the last. */
int clamd_scan_fd_from_cb(char *const *addrs, size_t from, int fd, const struct clamd_policy *pol,
                          int timeout_ms, struct clamd_result *r, clamd_fail_fn *on_fail, void *ctx)
{
	char all[sizeof r->reply];
	size_t tried = 0, used = 0;

	all[0] = '\0';
	for (size_t i = from; addrs != NULL && addrs[i] != NULL; i++) {
		if (!clamd_addr_usable(addrs, i))
			continue;
		if (clamd_scan_fd(addrs[i], fd, pol, timeout_ms, r) == 0)
			return 0;
		if (r->verdict == V_ERROR && r->contacted && on_fail != NULL)
			on_fail(ctx, addrs[i], r);
		tried++;
		if (used < sizeof all) {
			/* Truncation only shortens a diagnostic. */
			int k = snprintf(all + used, sizeof all - used, "%s%s: %s",
			                 used ? "; " : "", addrs[i], r->reply);
			used += k > 0 ? (size_t)k : 0;
		}
	}
	/* Only an error is rewritten: V_UNSCANNABLE keeps its own reply, which callers map. */
	if (tried > 1 && r->verdict == V_ERROR)
		snprintf(r->reply, sizeof r->reply, "%s", all);
	return -1;
}

static int clamd_scan_fd_from(char *const *addrs, size_t from, int fd,
                              const struct clamd_policy *pol, int timeout_ms,
                              struct clamd_result *r)
{
	return clamd_scan_fd_from_cb(addrs, from, fd, pol, timeout_ms, r, NULL, NULL);
}

int clamd_scan_fd_any(char *const *addrs, int fd, const struct clamd_policy *pol, int timeout_ms,
                      struct clamd_result *r)
{
	clamd_result_reset(r, "");
	clamd_fail(r, V_ERROR, "no clamd address");
	return clamd_scan_fd_from(addrs, 0, fd, pol, timeout_ms, r);
}

/* Send the z-command "z<cmd>\0" and read its one reply into line (CLAMD_REPLY_MAX bytes).
 * 0, or -1 with r set. */
static int clamd_command(const char *addr, const struct clamd_policy *pol, const char *cmd,
                         int timeout_ms, char *line, struct clamd_result *r)
{
	struct clamd_addr a;
	char req[32];
	int64_t deadline;
	int s, sent, rc = -1;

	if (clamd_request_begin(addr, timeout_ms, &a, &deadline, r) < 0)
		return -1;
	if (bsnprintf(req, sizeof req, "z%s", cmd) < 0)
		return clamd_fail(r, V_ERROR, "command too long");
	s = clamd_open(&a, pol, deadline, r);
	if (s < 0)
		return -1;
	/* The NUL is part of a z-command. */
	sent = clamd_send_all(s, req, strlen(req) + 1, deadline, r);
	if (sent < 0)
		goto out;
	if (clamd_reply_read(s, deadline, line, r) < 0)
		goto out;
	rc = 0;
out:
	close(s);
	return rc;
}

int clamd_version(const char *addr, const struct clamd_policy *pol, int timeout_ms, char *out,
                  size_t len)
{
	struct clamd_result r;
	char line[CLAMD_REPLY_MAX];

	if (clamd_command(addr, pol, "VERSION", timeout_ms, line, &r) < 0) {
		if (len > 0)
			snprintf(out, len, "%s", r.reply);
		return -1;
	}
	if (len > 0)
		snprintf(out, len, "%s", line);
	if (strncmp(line, "ClamAV ", 7) != 0 || strlen(line) >= len)
		return -1;
	return 0;
}

int clamd_version_any(char *const *addrs, const struct clamd_policy *pol, int timeout_ms, char *out,
                      size_t len)
{
	if (len > 0)
		snprintf(out, len, "no clamd address");
	for (size_t i = 0; addrs != NULL && addrs[i] != NULL; i++)
		if (clamd_addr_usable(addrs, i) &&
		    clamd_version(addrs[i], pol, timeout_ms, out, len) == 0)
			return 0;
	return -1;
}

int clamd_ping(const char *addr, const struct clamd_policy *pol, int timeout_ms)
{
	struct clamd_result r;
	char line[CLAMD_REPLY_MAX];

	if (clamd_command(addr, pol, "PING", timeout_ms, line, &r) < 0)
		return -1;
	return strcmp(line, "PONG") == 0 ? 0 : -1;
}
