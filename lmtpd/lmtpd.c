/*
 * lmtpd - the LMTP/ESMTP intake: Postfix's "advanced" content filter transport.
 *
 *   lmtpd [-c CONFIG]
 *
 * Listens on the Unix socket lmtp.socket (default <spool>/run/lmtp, for Postfix's
 * `content_filter = lmtp:unix:...`) and, when lmtp.listen_tcp is set, on one loopback TCP
 * address. The protocol (LHLO for LMTP, EHLO/HELO for SMTP) is lib/smtpproto.c; this file
 * is the I/O and the commit.
 *
 * Each message becomes a queue file exactly as `spoolctl inject` writes one (docs/
 * INTERNALS.md "Queue file format"; lib/queuefile.c): tmp/<qid>.lmtp, renamed into
 * inbound/<qid>, so the splitter keeps the queue ID the client was told. The reply that
 * accepts a message (one per recipient for LMTP) is sent only once the file's data and
 * its name in inbound/ are durable. Sessions that end their DATA in the same turn of the loop share
 * one commit: one syncfs(2) for all their data, their renames, one fsync of inbound/ (group
 * commit).
 *
 * Why one process with poll(2): a session is a few kilobytes of state and a line at a
 * time of work, so non-blocking I/O serves hundreds of clients without a process each;
 * nothing a client does blocks another (every socket is non-blocking, every buffer
 * bounded, every session has an idle deadline). The one blocking step is the commit's
 * syncfs, which every session waiting on it needs anyway. A crash loses only replies
 * not yet sent: the client retries those messages (a message whose reply was lost after
 * its commit is delivered twice, which SMTP allows and a lost message it does not).
 *
 * Refusals: 421 at connect when lmtp.max_connections sessions are open or the stage is
 * paused (SIGUSR1; SIGUSR2 resumes), and to MAIL when paused meanwhile; 452 4.3.1 to MAIL
 * when the spool's filesystem is nearly full; 451/452 after the data when the queue file
 * cannot be written. 421 4.4.2 after lmtp.timeout seconds of silence.
 *
 * Start-up: queue files a killed lmtpd left in tmp/ (*.lmtp) were never acknowledged,
 * so they are removed. Then readiness for spoold (lib/stage.c). SIGTERM: answer every
 * session 421, drop unfinished messages, exit 0. The loop is not stage_main's, which
 * waits on inotify for names in a directory; lmtpd waits on sockets. It keeps the
 * stages' conventions: readiness, SIGTERM/SIGUSR1/SIGUSR2, $SPOOLD_PAUSED, metrics.
 *
 * XFORWARD attributes (the original client, from Postfix) are logged with the queue ID
 * on the "queued" line, and written into the queue file's X record: the splitter copies
 * them into the message's trace ("xforward name=... addr=..."). They are what the client
 * says, escaped, and decide nothing.
 *
 * Exit: 0 after SIGTERM; 75 when the spool or a listener cannot be set up (spoold
 * restarts it); 78 on a bad config.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf.h"
#include "envelope.h"
#include "log.h"
#include "metrics.h"
#include "queuefile.h"
#include "smtpproto.h"
#include "spool.h"
#include "stage.h"
#include "util.h"
#include "version.h"

#define LMTPD_INBUF    16384
#define LMTPD_WBUF     65536
#define LMTPD_TMP_SUFF ".lmtp"

struct lmtpd_conn {
	int fd;
	struct smtp_sess sess;
	char in[LMTPD_INBUF];
	size_t in_len;
	size_t out_off;   /* bytes of sess.out already sent */
	int64_t deadline; /* monotonic ms */
	struct queuefile qf;
	int qf_open;        /* qf is being written (DATA) or waits for its commit */
	struct buf wbuf;    /* message bytes not yet written */
	int commit_pending; /* DATA ended: commit in this turn of the loop */
	struct lmtpd_conn *next;
};

static struct conf *lmtpd_conf;
static struct spool lmtpd_spool;
static struct lmtpd_conn *lmtpd_conns;
static int lmtpd_n_conns;
static char lmtpd_host[128];
static volatile sig_atomic_t lmtpd_stop;
static volatile sig_atomic_t lmtpd_paused;

static void lmtpd_on_signal(int sig)
{
	if (sig == SIGTERM || sig == SIGINT)
		lmtpd_stop = 1;
	else if (sig == SIGUSR1)
		lmtpd_paused = 1;
	else if (sig == SIGUSR2)
		lmtpd_paused = 0;
}

static void lmtpd_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = lmtpd_on_signal;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: a stop request must interrupt poll(2). */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	signal(SIGPIPE, SIG_IGN); /* a client that went away is a write error, not a death */
	signal(SIGHUP, SIG_IGN);  /* spoold restarts us when our settings change */
}

/* ---- the queue file ------------------------------------------------------------------ */

static void lmtpd_tmp_discard(struct lmtpd_conn *c)
{
	if (c->qf_open)
		queuefile_discard(&lmtpd_spool, &c->qf);
	c->qf_open = 0;
	buf_reset(&c->wbuf);
	c->commit_pending = 0;
}

static void lmtpd_wbuf_flush(struct lmtpd_conn *c)
{
	if (c->wbuf.len == 0 || !c->qf_open)
		return;
	if (c->qf.err == 0 && queuefile_write(&c->qf, c->wbuf.data, c->wbuf.len) < 0)
		log_warn(c->qf.qid, "cannot write %s/tmp/%s: %s", lmtpd_spool.root, c->qf.tmpname,
		         strerror(c->qf.err));
	buf_reset(&c->wbuf);
}

static const char *lmtpd_op_mail(void *ctx, uint64_t size)
{
	(void)ctx;
	if (lmtpd_paused || lmtpd_stop)
		return "421 4.3.2 Service paused; try again later";
	/* Keep room for the stages after us (the splitter stops below SPOOL_RESERVE_BYTES)
	 * and for the message announced. */
	uint64_t free_bytes = spool_space_free(&lmtpd_spool);
	if (free_bytes != UINT64_MAX && free_bytes < 2ull * SPOOL_RESERVE_BYTES + size)
		return "452 4.3.1 Insufficient system storage";
	return NULL;
}

static int lmtpd_op_data_begin(void *ctx)
{
	struct lmtpd_conn *c = ctx;
	buf_reset(&c->wbuf);
	if (queuefile_create(&lmtpd_spool, LMTPD_TMP_SUFF, &c->sess.env,
	                     buf_cstr(&c->sess.xforward), &c->qf) < 0) {
		log_warn(c->qf.qid, "cannot create a queue file in %s/tmp: %s", lmtpd_spool.root,
		         strerror(errno));
		return -1;
	}
	c->qf_open = 1;
	return 0;
}

static void lmtpd_op_data_write(void *ctx, const char *p, size_t n)
{
	struct lmtpd_conn *c = ctx;
	buf_add(&c->wbuf, p, n);
	if (c->wbuf.len >= LMTPD_WBUF)
		lmtpd_wbuf_flush(c);
}

static void lmtpd_op_data_abort(void *ctx)
{
	lmtpd_tmp_discard(ctx);
}

static void lmtpd_op_data_end(void *ctx)
{
	struct lmtpd_conn *c = ctx;
	lmtpd_wbuf_flush(c);
	c->commit_pending = 1;
}

static const struct smtp_ops lmtpd_ops = {
    .mail = lmtpd_op_mail,
    .data_begin = lmtpd_op_data_begin,
    .data_write = lmtpd_op_data_write,
    .data_abort = lmtpd_op_data_abort,
    .data_end = lmtpd_op_data_end,
};

static const char *lmtpd_fail_reply(int err)
{
	if (err == ENOSPC || err == EDQUOT)
		return "452 4.3.1 Insufficient system storage";
	return "451 4.3.0 Cannot queue the message now; try again later";
}

/*
 * The group commit: every session whose DATA ended in this turn of the loop, committed
 * as one batch by queuefile_commit (one syncfs, the renames into inbound/, one fsync of
 * inbound/). Only then are the replies queued: "accepted" means durable. A batch is
 * bounded; sessions beyond it stay pending and go in the next turn (poll does not wait
 * while one is pending).
 */
static void lmtpd_commit_all(void)
{
	struct lmtpd_conn *batch[256];
	struct queuefile *qfs[256];
	size_t n = 0;
	for (struct lmtpd_conn *c = lmtpd_conns; c && n < ARRAY_LEN(batch); c = c->next)
		if (c->commit_pending) {
			batch[n] = c;
			qfs[n++] = &c->qf;
		}
	if (n == 0)
		return;
	int derr = 0;
	if (queuefile_commit(&lmtpd_spool, qfs, n) < 0) {
		derr = errno;
		log_error(NULL, "cannot fsync %s/inbound: %s", lmtpd_spool.root, strerror(derr));
	}
	int ok = 0;
	for (size_t i = 0; i < n; i++) {
		struct lmtpd_conn *c = batch[i];
		c->commit_pending = 0;
		c->qf_open = 0;
		if (c->qf.err != 0) {
			log_warn(c->qf.qid, "message not queued (%s): answered temporary failure",
			         strerror(c->qf.err));
			smtp_commit_done(&c->sess, lmtpd_fail_reply(c->qf.err), NULL);
			continue;
		}
		if (derr != 0) {
			smtp_commit_done(&c->sess, lmtpd_fail_reply(derr), NULL);
			continue;
		}
		struct buf lb;
		buf_init(&lb);
		kv_addstr(&lb, "from", c->sess.env.sender);
		buf_printf(&lb, " nrcpt=%zu size=%llu via=%s", c->sess.env.n_rcpts,
		           (unsigned long long)c->sess.data_size, c->sess.lmtp ? "lmtp" : "smtp");
		if (c->sess.xforward.len)
			buf_add(&lb, c->sess.xforward.data, c->sess.xforward.len);
		log_info(c->qf.qid, "queued%s", buf_cstr(&lb));
		buf_free(&lb);
		metrics_inc("spoold_lmtp_messages_total", NULL, 1);
		smtp_commit_done(&c->sess, NULL, c->qf.qid);
		ok++;
	}
	log_debug(NULL, "group commit: %zu messages, one syncfs, %d accepted", n, ok);
}

/* A killed lmtpd left its unfinished queue files in tmp/: none was acknowledged (the
 * reply follows the rename), so the client still has every one of them. */
static void lmtpd_recover(void)
{
	int n = queuefile_recover(&lmtpd_spool, LMTPD_TMP_SUFF);
	if (n < 0)
		die_temp(NULL, "cannot list %s/tmp: %s", lmtpd_spool.root, strerror(errno));
	if (n > 0)
		log_info(NULL, "removed %d unacknowledged queue files (*%s) from %s/tmp", n,
		         LMTPD_TMP_SUFF, lmtpd_spool.root);
}

/* ---- listeners --------------------------------------------------------------------- */

static ino_t lmtpd_sock_ino;

/* Remove a stale socket (our predecessor's) at path, but never anything else. */
static void lmtpd_stale_socket_remove(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return;
	if (!S_ISSOCK(st.st_mode))
		die_perm(EXIT_CONFIG, "lmtp.socket %s exists and is not a socket", path);
	if (unlink(path) < 0 && errno != ENOENT)
		die_temp(NULL, "cannot remove the stale socket %s: %s", path, strerror(errno));
}

static int lmtpd_listen_unix(const char *path, int mode)
{
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	/* The socket is made under a side name and renamed onto the configured path once it
	 * has its mode and listens: a client (Postfix's lmtp) that finds the path finds it
	 * ready, never a socket still 0600 or not yet listening, and a restart replaces the
	 * old socket in one step instead of leaving a moment with no path at all. */
	char tmp[sizeof sa.sun_path];
	if (bsnprintf(tmp, sizeof tmp, "%s.new", path) < 0)
		die_perm(EXIT_CONFIG,
		         "lmtp.socket %s is longer than a socket path may be (%zu, with \".new\")",
		         path, sizeof sa.sun_path - 5);
	memcpy(sa.sun_path, tmp, sizeof tmp);
	lmtpd_stale_socket_remove(tmp);
	struct stat st;
	if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
		die_perm(EXIT_CONFIG, "lmtp.socket %s exists and is not a socket", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die_temp(NULL, "cannot make a socket: %s", strerror(errno));
	/* Bind under a umask that leaves no window where the socket is more open than its
	 * configured mode; the chmod then sets exactly that mode. */
	mode_t old = umask(0177);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
	umask(old);
	if (r < 0)
		die_temp(NULL, "cannot bind %s: %s", tmp, strerror(errno));
	if (chmod(tmp, (mode_t)mode) < 0)
		die_temp(NULL, "cannot chmod %s: %s", tmp, strerror(errno));
	if (listen(fd, 128) < 0)
		die_temp(NULL, "cannot listen on %s: %s", tmp, strerror(errno));
	if (lstat(tmp, &st) == 0)
		lmtpd_sock_ino = st.st_ino;
	/* rename(2) replaces a stale socket at path atomically; anything else there was
	 * refused above. */
	if (rename(tmp, path) < 0)
		die_temp(NULL, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
	return fd;
}

static int lmtpd_listen_tcp(const char *spec)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	memset(&ss, 0, sizeof ss);
	const char *port;
	uint64_t pn;
	char host[64];
	if (spec[0] == '[') {
		const char *e = strchr(spec, ']');
		if (e == NULL || e[1] != ':' || (size_t)(e - spec - 1) >= sizeof host)
			die_perm(EXIT_CONFIG, "lmtp.listen_tcp '%s' is not [ADDR]:PORT", spec);
		memcpy(host, spec + 1, (size_t)(e - spec - 1));
		host[e - spec - 1] = '\0';
		port = e + 2;
	} else {
		const char *e = strrchr(spec, ':');
		if (e == NULL || (size_t)(e - spec) >= sizeof host)
			die_perm(EXIT_CONFIG, "lmtp.listen_tcp '%s' is not ADDR:PORT", spec);
		memcpy(host, spec, (size_t)(e - spec));
		host[e - spec] = '\0';
		port = e + 1;
	}
	if (parse_u64(port, &pn) < 0 || pn == 0 || pn > 65535)
		die_perm(EXIT_CONFIG, "lmtp.listen_tcp '%s': bad port", spec);
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)pn);
		sl = sizeof *s4;
	} else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)pn);
		sl = sizeof *s6;
	} else {
		die_perm(EXIT_CONFIG, "lmtp.listen_tcp '%s': bad address", spec);
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die_temp(NULL, "cannot make a socket: %s", strerror(errno));
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
		log_warn(NULL, "cannot set SO_REUSEADDR on %s: %s", spec, strerror(errno));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 128) < 0)
		die_temp(NULL, "cannot listen on %s: %s", spec, strerror(errno));
	return fd;
}

/* ---- sessions ---------------------------------------------------------------------- */

static void lmtpd_conn_free(struct lmtpd_conn *c)
{
	/* smtp_sess_free aborts a message in DATA; one waiting for its commit is ours. */
	smtp_sess_free(&c->sess);
	lmtpd_tmp_discard(c);
	buf_free(&c->wbuf);
	close(c->fd);
	free(c);
	lmtpd_n_conns--;
}

/* Send what is queued; 0, or -1 when the client is gone. */
static int lmtpd_conn_send(struct lmtpd_conn *c)
{
	struct buf *o = &c->sess.out;
	while (c->out_off < o->len) {
		ssize_t w = send(c->fd, o->data + c->out_off, o->len - c->out_off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		c->out_off += (size_t)w;
	}
	buf_reset(o);
	c->out_off = 0;
	return 0;
}

/* Best effort, for a client we turn away at once. */
static void lmtpd_refuse(int fd, const char *line)
{
	if (send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EAGAIN)
		log_debug(NULL, "cannot send the refusal: %s", strerror(errno));
	close(fd);
}

static void lmtpd_accept(int lfd)
{
	for (int i = 0; i < 64; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
			    errno != ECONNABORTED)
				log_warn(NULL, "accept: %s", strerror(errno));
			return;
		}
		if (lmtpd_paused || lmtpd_stop) {
			lmtpd_refuse(fd, "421 4.3.2 Service paused; try again later\r\n");
			continue;
		}
		if (lmtpd_n_conns >= lmtpd_conf->lmtp.max_connections) {
			log_warn(NULL, "%d sessions open (lmtp.max_connections): refusing one",
			         lmtpd_n_conns);
			lmtpd_refuse(fd, "421 4.3.2 Too many connections; try again later\r\n");
			continue;
		}
		struct lmtpd_conn *c = xcalloc(1, sizeof *c);
		c->fd = fd;
		buf_init(&c->wbuf);
		smtp_sess_init(&c->sess, &lmtpd_ops, c, lmtpd_host,
		               lmtpd_conf->lmtp.max_message_size, lmtpd_conf->lmtp.max_recipients);
		smtp_greet(&c->sess);
		c->deadline = now_ms_monotonic() + (int64_t)lmtpd_conf->lmtp.timeout * 1000;
		c->next = lmtpd_conns;
		lmtpd_conns = c;
		lmtpd_n_conns++;
	}
}

/* Feed what was read; the rest waits while the session waits for its commit. */
static void lmtpd_conn_feed(struct lmtpd_conn *c)
{
	if (c->in_len == 0)
		return;
	size_t used = smtp_input(&c->sess, c->in, c->in_len);
	if (used < c->in_len)
		memmove(c->in, c->in + used, c->in_len - used);
	c->in_len -= used;
}

/* Read and handle; 0, or -1 when the session is over. */
static int lmtpd_conn_read(struct lmtpd_conn *c)
{
	ssize_t r = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
	if (r < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
	if (r == 0)
		return -1; /* the client closed: a message without its final dot is dropped */
	c->in_len += (size_t)r;
	c->deadline = now_ms_monotonic() + (int64_t)lmtpd_conf->lmtp.timeout * 1000;
	lmtpd_conn_feed(c);
	return 0;
}

static int lmtpd_wants_input(struct lmtpd_conn *c)
{
	return c->sess.state != SMTP_S_COMMIT && c->sess.state != SMTP_S_CLOSED &&
	       c->in_len < sizeof c->in && c->sess.out.len < SMTP_OUT_HIGH;
}

static void lmtpd_usage(void)
{
	die_perm(EXIT_USAGE, "usage: lmtpd [-c CONFIG]");
}

/* What the main loop polls: the listening sockets (conn NULL), then every session. */
struct lmtpd_pollset {
	struct pollfd *pfd;
	struct lmtpd_conn **conn;
	size_t cap;
	size_t n;
};

/* Fill the poll set for this turn; returns how long poll may wait (ms): until the nearest
 * session deadline, at most a second, none when a commit is pending. */
static int64_t lmtpd_pollset_build(struct lmtpd_pollset *ps, const int lfd[2])
{
	size_t need = (size_t)lmtpd_n_conns + 2;
	if (need > ps->cap) {
		ps->cap = need * 2;
		ps->pfd = xrealloc(ps->pfd, ps->cap * sizeof *ps->pfd);
		ps->conn = xrealloc(ps->conn, ps->cap * sizeof *ps->conn);
	}
	size_t np = 0;
	for (int i = 0; i < 2; i++)
		if (lfd[i] >= 0) {
			ps->pfd[np] = (struct pollfd){.fd = lfd[i], .events = POLLIN};
			ps->conn[np++] = NULL;
		}
	int64_t now = now_ms_monotonic();
	int64_t wait = 1000;
	for (struct lmtpd_conn *c = lmtpd_conns; c; c = c->next) {
		short ev = 0;
		if (lmtpd_wants_input(c))
			ev |= POLLIN;
		if (c->sess.out.len > c->out_off)
			ev |= POLLOUT;
		ps->pfd[np] = (struct pollfd){.fd = c->fd, .events = ev};
		ps->conn[np++] = c;
		if (c->deadline - now < wait)
			wait = c->deadline - now < 0 ? 0 : c->deadline - now;
		/* A message that ended in input fed after the last commit: commit it now,
		 * not after the next event. */
		if (c->commit_pending)
			wait = 0;
	}
	ps->n = np;
	return wait;
}

/* After poll: accept on a listening socket, read what a session sent. */
static void lmtpd_pollset_handle(const struct lmtpd_pollset *ps)
{
	for (size_t i = 0; i < ps->n; i++) {
		if (ps->pfd[i].revents == 0)
			continue;
		if (ps->conn[i] == NULL) {
			lmtpd_accept(ps->pfd[i].fd);
			continue;
		}
		struct lmtpd_conn *c = ps->conn[i];
		if (ps->pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) {
			if (lmtpd_wants_input(c) && lmtpd_conn_read(c) < 0) {
				/* Gone: nothing more to say, nothing more to read. */
				if (c->sess.state != SMTP_S_COMMIT) {
					smtp_close_with(&c->sess, "");
					buf_reset(&c->sess.out);
					c->out_off = 0;
				}
				c->in_len = 0;
			}
		}
	}
}

/* After the commit: feed held-back input, time idle sessions out, send the replies, and
 * free the sessions that are over. */
static void lmtpd_conns_tend(int64_t now)
{
	struct lmtpd_conn **pp = &lmtpd_conns;
	while (*pp) {
		struct lmtpd_conn *c = *pp;
		/* Input held back while the session waited for its commit or its replies.
		 */
		if (lmtpd_wants_input(c))
			lmtpd_conn_feed(c);
		if (c->sess.state != SMTP_S_CLOSED && c->sess.state != SMTP_S_COMMIT &&
		    now >= c->deadline) {
			log_info(NULL, "session idle for %d s: closing", lmtpd_conf->lmtp.timeout);
			smtp_close_with(&c->sess, "421 4.4.2 Timeout; closing the connection");
		}
		int gone = lmtpd_conn_send(c) < 0 ||
		           (c->sess.state == SMTP_S_CLOSED && c->sess.out.len == 0);
		/* Closed with replies unsent: give the client until its deadline. */
		if (c->sess.state == SMTP_S_CLOSED && now >= c->deadline + 5000)
			gone = 1;
		if (gone) {
			*pp = c->next;
			lmtpd_conn_free(c);
		} else {
			pp = &c->next;
		}
	}
}

/* Stopping: nothing half-received is kept (no reply accepted it), every session is told
 * to come back; the listening sockets close and our socket file goes. */
static void lmtpd_shutdown(const int lfd[2])
{
	while (lmtpd_conns) {
		struct lmtpd_conn *c = lmtpd_conns;
		lmtpd_conns = c->next;
		if (c->sess.state != SMTP_S_CLOSED)
			smtp_close_with(&c->sess, "421 4.3.2 Shutting down; try again later");
		lmtpd_conn_send(c);
		lmtpd_conn_free(c);
	}
	for (int i = 0; i < 2; i++)
		if (lfd[i] >= 0)
			close(lfd[i]);
	/* Our socket only: a new lmtpd may have replaced it meanwhile. */
	struct stat sst;
	if (lstat(lmtpd_conf->lmtp.socket, &sst) == 0 && sst.st_ino == lmtpd_sock_ino &&
	    unlink(lmtpd_conf->lmtp.socket) < 0)
		log_warn(NULL, "cannot remove %s: %s", lmtpd_conf->lmtp.socket, strerror(errno));
}

int main(int argc, char **argv)
{
	const char *conf_path = "/etc/spoold/spoold.conf";
	log_init("lmtpd");
	stage_ready_take();
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			conf_path = argv[++i];
		else if (strcmp(argv[i], "--version") == 0)
			version_print_exit("lmtpd");
		else
			lmtpd_usage();
	}
	lmtpd_conf = conf_load(conf_path);
	spool_open(&lmtpd_spool, lmtpd_conf->spool_dir, 1);
	lmtpd_signals();
	if (gethostname(lmtpd_host, sizeof lmtpd_host) < 0)
		snprintf(lmtpd_host, sizeof lmtpd_host, "localhost");
	lmtpd_host[sizeof lmtpd_host - 1] = '\0';
	lmtpd_recover();

	int lfd[2] = {-1, -1};
	lfd[0] = lmtpd_listen_unix(lmtpd_conf->lmtp.socket, lmtpd_conf->lmtp.socket_mode);
	if (lmtpd_conf->lmtp.listen_tcp[0])
		lfd[1] = lmtpd_listen_tcp(lmtpd_conf->lmtp.listen_tcp);
	const char *ps = getenv("SPOOLD_PAUSED");
	if (ps && strcmp(ps, "1") == 0)
		lmtpd_paused = 1;
	log_info(NULL, "started, listening on %s%s%s", lmtpd_conf->lmtp.socket,
	         lfd[1] >= 0 ? " and " : "", lfd[1] >= 0 ? lmtpd_conf->lmtp.listen_tcp : "");
	stage_ready_notify();

	struct lmtpd_pollset set = {0};
	int64_t next_metrics = 0;
	while (!lmtpd_stop) {
		int64_t wait = lmtpd_pollset_build(&set, lfd);
		int r = poll(set.pfd, set.n, (int)wait);
		if (r < 0 && errno != EINTR)
			die_temp(NULL, "poll: %s", strerror(errno));
		if (lmtpd_stop)
			break;
		if (r > 0)
			lmtpd_pollset_handle(&set);
		/* Every session that ended a message in this turn shares one commit. */
		lmtpd_commit_all();
		int64_t now = now_ms_monotonic();
		lmtpd_conns_tend(now);
		if (now >= next_metrics) {
			metrics_flush(&lmtpd_spool, "lmtpd");
			next_metrics = now + 1000;
		}
	}
	lmtpd_shutdown(lfd);
	metrics_flush(&lmtpd_spool, "lmtpd");
	log_info(NULL, "stopping");
	free(set.pfd);
	free(set.conn);
	spool_close(&lmtpd_spool);
	conf_free(lmtpd_conf);
	return 0;
}
