/*
 * broker - the scanner exec broker, both sides of its protocol (see broker.h).
 */
#include "broker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

void broker_file_arg(size_t i, char *out, size_t len)
{
	snprintf(out, len, "/dev/fd/%zu", (size_t)BROKER_FD_BASE + i);
}

/* sendmsg of one packet with up to BROKER_FDS_PER_MSG descriptors; MSG_NOSIGNAL: a peer
 * that went away is EPIPE here, never a SIGPIPE. 0 or -1 with errno. */
static int broker_send(int fd, const void *p, size_t n, const int *fds, size_t nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * BROKER_FDS_PER_MSG)];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = (void *)p, .iov_len = n};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (nfds > BROKER_FDS_PER_MSG) {
		errno = E2BIG;
		return -1;
	}
	if (nfds > 0) {
		memset(&u, 0, sizeof u);
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	for (;;) {
		ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (r == (ssize_t)n)
			return 0;
		if (r >= 0) {
			errno = EMSGSIZE; /* a packet is all or nothing */
			return -1;
		}
		if (errno != EINTR)
			return -1;
	}
}

/* Wait until fd is readable or hung up, at most ms (< 0: no bound). 1 ready, 0 timeout,
 * -1 error. */
static int broker_wait(int fd, int ms)
{
	int64_t until = ms >= 0 ? now_ms_monotonic() + ms : -1;
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int left = -1;
		if (until >= 0) {
			int64_t d = until - now_ms_monotonic();
			left = d < 0 ? 0 : (int)d;
		}
		int r = poll(&p, 1, left);
		if (r >= 0)
			return r;
		if (errno != EINTR)
			return -1;
	}
}

/* ---- the runner's side --------------------------------------------------------------- */

/* A result that says "not run": never a status, so never clean. */
static void broker_res_refused(struct exec_result *res, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void broker_res_refused(struct exec_result *res, int err, const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	res->exec_failed = 1;
	res->exec_errno = err;
	res->exit_code = 127;
	buf_printf(&res->output, "scanner broker: %s", msg);
}

/* Open file path for the scanner. -1 (absent) when it cannot be opened or is not a
 * regular file: the scanner then finds "/dev/fd/N" missing and reports an error. */
static int broker_file_open(const char *path)
{
	/* O_NOFOLLOW: the part is ours, in our directory; never a link to elsewhere. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		if (errno != ENOENT)
			log_warn(NULL, "cannot open %s for the scanner: %s", path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		log_warn(NULL, "%s is not a regular file; the scanner does not get it", path);
		close(fd);
		return -1;
	}
	/* The trust decision of broker.h: "/dev/fd/N" reopens the inode, and the scanner
	 * user is "other" for it. Reading it needs S_IROTH; what keeps every other file
	 * from the scanner user is that it cannot traverse the spool's 0750 directories. */
	if (!(st.st_mode & S_IROTH) && fchmod(fd, (st.st_mode & 07777) | S_IROTH) < 0)
		log_warn(NULL, "cannot make %s readable through its descriptor: %s", path,
		         strerror(errno));
	return fd;
}

/* Send the files in batches of BROKER_FDS_PER_MSG: the runner holds at most one batch
 * open at a time. 0 or -1 with errno (the handler has gone). */
static int broker_files_send(int rfd, const struct exec_opts *o)
{
	for (size_t b = 0; b < o->n_files; b += BROKER_FDS_PER_MSG) {
		struct broker_files f;
		int fds[BROKER_FDS_PER_MSG];
		size_t nfds = 0;
		memset(&f, 0, sizeof f);
		f.magic = BROKER_MAGIC_FILES;
		f.first = (uint32_t)b;
		f.count = (uint32_t)(o->n_files - b < BROKER_FDS_PER_MSG ? o->n_files - b
		                                                         : BROKER_FDS_PER_MSG);
		for (uint32_t i = 0; i < f.count; i++) {
			int fd = broker_file_open(o->files[b + i]);
			f.present[i] = fd >= 0;
			if (fd >= 0)
				fds[nfds++] = fd;
		}
		int r = broker_send(rfd, &f, sizeof f, fds, nfds);
		int e = errno;
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
		if (r < 0) {
			errno = e;
			return -1;
		}
	}
	return 0;
}

/* Read the answer from the handler. 0, or -1 with errno (EPROTO: malformed). */
static int broker_answer_read(int rfd, const struct exec_opts *o, struct exec_result *res)
{
	/* The handler answers within the scanner's deadline and its grace; the margin covers
	 * the fork and the file batches. With no deadline, neither has this wait. */
	int wait_ms = o->timeout_ms > 0 ? o->timeout_ms + (o->grace_ms > 0 ? o->grace_ms : 2000) +
	                                      BROKER_FILES_WAIT_MS
	                                : -1;
	struct broker_res h;
	int w = broker_wait(rfd, wait_ms);
	if (w <= 0) {
		if (w == 0)
			errno = ETIMEDOUT;
		return -1;
	}
	ssize_t n = recv(rfd, &h, sizeof h, 0);
	if (n < 0)
		return -1;
	if (n == 0) {
		errno = ECONNRESET; /* the handler died before it answered */
		return -1;
	}
	if ((size_t)n != sizeof h || h.magic != BROKER_MAGIC_RES || h.output_len > o->output_max) {
		errno = EPROTO;
		return -1;
	}
	char *chunk = xmalloc(BROKER_CHUNK);
	while (res->output.len < h.output_len) {
		if (broker_wait(rfd, 10000) <= 0 || (n = recv(rfd, chunk, BROKER_CHUNK, 0)) <= 0 ||
		    (uint64_t)n > h.output_len - res->output.len) {
			free(chunk);
			errno = EPROTO;
			return -1;
		}
		buf_add(&res->output, chunk, (size_t)n);
	}
	free(chunk);
	if (h.refused) {
		res->exec_failed = 1;
		res->exec_errno = h.refused;
		res->exit_code = 127;
		return 0;
	}
	res->exited = h.exited != 0;
	res->exit_code = h.exit_code;
	res->signaled = h.signaled != 0;
	res->signo = h.signo;
	res->timed_out = h.timed_out != 0;
	res->exec_failed = h.exec_failed != 0;
	res->exec_errno = h.exec_errno;
	res->wait_failed = h.wait_failed != 0;
	res->wait_errno = h.wait_errno;
	res->output_truncated = h.output_truncated != 0;
	res->ms = (long)h.ms;
	return 0;
}

int broker_run(int broker_fd, char *const argv[], const struct exec_opts *o,
               struct exec_result *res)
{
	memset(res, 0, sizeof *res);
	buf_init(&res->output);
	int64_t start = now_ms_monotonic();
	struct broker_req rq;
	struct buf msg;
	size_t argc = 0;
	memset(&rq, 0, sizeof rq);
	buf_init(&msg);
	buf_add(&msg, &rq, sizeof rq);
	const char *cwd = o->cwd ? o->cwd : "";
	buf_add(&msg, cwd, strlen(cwd) + 1);
	for (; argv[argc]; argc++)
		buf_add(&msg, argv[argc], strlen(argv[argc]) + 1);
	/* Bounds the broker enforces too; checked here so that an over-long request is a
	 * clear error of this run, not a refusal to decode. */
	if (argc == 0 || argc > BROKER_ARGC_MAX || msg.len - sizeof rq > BROKER_STRINGS_MAX ||
	    o->n_files > BROKER_FILES_MAX || o->output_max > BROKER_OUTPUT_MAX) {
		broker_res_refused(
		    res, E2BIG,
		    "request too large (%zu words, %zu bytes, %zu files; at most %d, "
		    "%d, %d)",
		    argc, msg.len - sizeof rq, o->n_files, BROKER_ARGC_MAX, BROKER_STRINGS_MAX,
		    BROKER_FILES_MAX);
		buf_free(&msg);
		return 0;
	}
	rq.magic = BROKER_MAGIC_REQ;
	rq.argc = (uint32_t)argc;
	rq.strings_len = (uint32_t)(msg.len - sizeof rq);
	rq.n_files = (uint32_t)o->n_files;
	rq.timeout_ms = o->timeout_ms;
	rq.grace_ms = o->grace_ms;
	rq.output_max = o->output_max;
	rq.rlimit_as = o->rlimit_as;
	rq.rlimit_cpu = o->rlimit_cpu;
	rq.rlimit_nofile = o->rlimit_nofile;
	memcpy(msg.data, &rq, sizeof rq);

	/* A reply socket per request: the answer cannot mix with another runner's, and its
	 * closing tells the handler that nobody waits any more (it kills the scanner). */
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
		buf_free(&msg);
		return -1;
	}
	int r = broker_send(broker_fd, msg.data, msg.len, &sp[1], 1);
	int e = errno;
	close(sp[1]);
	buf_free(&msg);
	if (r < 0) {
		/* The broker is gone (or the request cannot be sent at all): no verdict from
		 * this; the caller dies temporary and the message is scanned again later. */
		close(sp[0]);
		errno = e;
		return -1;
	}
	if (broker_files_send(sp[0], o) < 0 || broker_answer_read(sp[0], o, res) < 0) {
		e = errno;
		/* The broker itself died (our request was dropped with its queue): no verdict
		 * from this either; the runner dies temporary, spoold exits 75 and the message
		 * is scanned again after the restart. Its end closed shows as a hang-up here. */
		struct pollfd pb = {.fd = broker_fd, .events = 0};
		if (poll(&pb, 1, 0) == 1 && (pb.revents & (POLLHUP | POLLERR))) {
			close(sp[0]);
			buf_reset(&res->output);
			errno = EPIPE;
			return -1;
		}
		/* The handler went away mid-way (a scanner running as the same user may kill
		 * it): no status, so never clean; the next run asks a fresh handler. */
		buf_reset(&res->output);
		res->exited = 0;
		res->wait_failed = 1;
		res->wait_errno = e;
		buf_printf(&res->output, "scanner broker: no answer: %s", strerror(e));
		res->output_truncated = 1;
	}
	close(sp[0]); /* a handler still running sees the hang-up and kills its scanner */
	if (res->ms == 0)
		res->ms = (long)(now_ms_monotonic() - start);
	return 0;
}

/* ---- the broker's side --------------------------------------------------------------- */

/* Answer a request that is not run: refused is the errno, the text says why. */
static void broker_refuse(int rfd, int refused, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void broker_refuse(int rfd, int refused, const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_warn(NULL, "scanner broker: request refused: %s", msg);
	if (rfd < 0)
		return;
	struct broker_res h;
	memset(&h, 0, sizeof h);
	h.magic = BROKER_MAGIC_RES;
	h.refused = refused;
	h.output_len = strlen(msg);
	/* Non-blocking: a peer that does not read must not stall the broker. */
	if (broker_send(rfd, &h, sizeof h, NULL, 0) < 0 ||
	    broker_send(rfd, msg, strlen(msg), NULL, 0) < 0)
		log_warn(NULL, "scanner broker: cannot send the refusal: %s", strerror(errno));
}

static void broker_answer(int rfd, const struct exec_result *res)
{
	struct broker_res h;
	memset(&h, 0, sizeof h);
	h.magic = BROKER_MAGIC_RES;
	h.exited = res->exited;
	h.exit_code = res->exit_code;
	h.signaled = res->signaled;
	h.signo = res->signo;
	h.timed_out = res->timed_out;
	h.exec_failed = res->exec_failed;
	h.exec_errno = res->exec_errno;
	h.wait_failed = res->wait_failed;
	h.wait_errno = res->wait_errno;
	h.output_truncated = res->output_truncated;
	h.ms = res->ms;
	h.output_len = res->output.len;
	if (broker_send(rfd, &h, sizeof h, NULL, 0) < 0)
		return; /* the runner has gone: nobody to tell */
	for (size_t off = 0; off < res->output.len; off += BROKER_CHUNK) {
		size_t n =
		    res->output.len - off < BROKER_CHUNK ? res->output.len - off : BROKER_CHUNK;
		if (broker_send(rfd, res->output.data + off, n, NULL, 0) < 0)
			return;
	}
}

/* Close every descriptor an SCM_RIGHTS message brought. */
static void broker_cmsg_close(struct msghdr *mh)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
			close(fd);
		}
	}
}

/* Receive the file batches of a request into fds[0..n). 0, or -1 after a refusal. */
static int broker_files_recv(int rfd, int *fds, uint32_t n)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * BROKER_FDS_PER_MSG)];
		struct cmsghdr align;
	} u;
	uint32_t got = 0;
	while (got < n) {
		struct broker_files f;
		struct iovec iov = {.iov_base = &f, .iov_len = sizeof f};
		struct msghdr mh = {.msg_iov = &iov,
		                    .msg_iovlen = 1,
		                    .msg_control = u.buf,
		                    .msg_controllen = sizeof u.buf};
		int w = broker_wait(rfd, BROKER_FILES_WAIT_MS);
		if (w <= 0) {
			broker_refuse(rfd, ETIMEDOUT, "the files did not come within %d ms",
			              BROKER_FILES_WAIT_MS);
			return -1;
		}
		ssize_t r = recvmsg(rfd, &mh, MSG_CMSG_CLOEXEC);
		if (r <= 0)
			return -1; /* the runner has gone */
		size_t want = 0, nfd = 0;
		if ((size_t)r == sizeof f && f.magic == BROKER_MAGIC_FILES && f.first == got &&
		    f.count >= 1 && f.count <= BROKER_FDS_PER_MSG && f.count <= n - got)
			for (uint32_t i = 0; i < f.count; i++)
				want += f.present[i] != 0;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    CMSG_NXTHDR(&mh, c) == NULL)
			nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int ok = (size_t)r == sizeof f && f.magic == BROKER_MAGIC_FILES && f.first == got &&
		         f.count >= 1 && f.count <= BROKER_FDS_PER_MSG && f.count <= n - got &&
		         !(mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) && nfd == want &&
		         (want == 0 || c != NULL);
		if (!ok) {
			broker_cmsg_close(&mh);
			broker_refuse(rfd, EPROTO, "malformed file batch at file %u of %u", got, n);
			return -1;
		}
		size_t k = 0;
		for (uint32_t i = 0; i < f.count; i++) {
			if (f.present[i])
				memcpy(&fds[got + i], CMSG_DATA(c) + (k++) * sizeof(int),
				       sizeof(int));
			else
				fds[got + i] = -1;
		}
		got += f.count;
	}
	return 0;
}

/* One request, in its own process (the handler). Never returns. */
static noreturn void broker_handle(int rfd, const struct broker_req *rq, char *strings, int wdir_fd,
                                   const char *workdir)
{
	int *fds = xcalloc(rq->n_files ? rq->n_files : 1, sizeof(int));
	char **argv = xcalloc(rq->argc + 1, sizeof(char *));
	char name[64], dir[4096];
	struct exec_result res;
	int made = 0;
	/* SIG_DFL for SIGCHLD, or exec_run's waitpid sees no status (the broker ignores
	 * its handlers' exits). */
	if (exec_sigchld_default() < 0)
		die_temp(NULL, "scanner broker: cannot reset SIGCHLD: %s", strerror(errno));
	const char *cwd = strings;
	char *p = strings + strlen(strings) + 1;
	for (uint32_t i = 0; i < rq->argc; i++) {
		argv[i] = p;
		p += strlen(p) + 1;
	}
	for (uint32_t i = 0; i < rq->n_files; i++)
		fds[i] = -1;
	if (broker_files_recv(rfd, fds, rq->n_files) < 0)
		goto out;
	/* Every file above the numbers the scanner gets them at (exec.h, place_fds): the
	 * kernel gave them the lowest free numbers, which may be among those. */
	for (uint32_t i = 0; i < rq->n_files; i++) {
		if (fds[i] < 0)
			continue;
		int high = fcntl(fds[i], F_DUPFD_CLOEXEC, BROKER_FD_BASE + (int)rq->n_files);
		if (high < 0) {
			broker_refuse(rfd, errno, "cannot move file %u: %s", i, strerror(errno));
			goto out;
		}
		close(fds[i]);
		fds[i] = high;
	}
	/* A fresh empty directory per run, the scanner's cwd and TMPDIR: what one scan
	 * leaves there cannot meet the next one. */
	snprintf(name, sizeof name, "run.%ld", (long)getpid());
	if (remove_tree_at(wdir_fd, name) < 0 && errno != ENOENT)
		log_warn(NULL, "cannot remove %s/%s: %s", workdir, name, strerror(errno));
	if (mkdirat(wdir_fd, name, 0700) < 0 ||
	    bsnprintf(dir, sizeof dir, "%s/%s", workdir, name) < 0) {
		broker_refuse(rfd, errno ? errno : ENAMETOOLONG, "cannot make %s/%s: %s", workdir,
		              name, strerror(errno));
		goto out;
	}
	made = 1;
	struct exec_opts o;
	exec_opts_init(&o);
	o.cwd = cwd[0] ? cwd : dir;
	o.tmpdir = dir;
	o.timeout_ms = rq->timeout_ms;
	o.grace_ms = rq->grace_ms;
	o.output_max = (size_t)rq->output_max;
	o.rlimit_as = rq->rlimit_as;
	o.rlimit_cpu = rq->rlimit_cpu;
	/* rlimit_nofile bounds what the scanner opens itself; the descriptors it is handed
	 * (one per part, all open at once here, unlike a scanner that opens its files one
	 * by one) come on top, or a per-message run over many parts could open nothing. */
	o.rlimit_nofile = rq->rlimit_nofile ? rq->rlimit_nofile + BROKER_FD_BASE + rq->n_files : 0;
	o.place_fds = fds;
	o.n_place = rq->n_files;
	o.cancel_fd = rfd;
	if (exec_run(argv, &o, &res) < 0) {
		broker_refuse(rfd, errno, "cannot run %s: %s", argv[0], strerror(errno));
		goto out;
	}
	for (uint32_t i = 0; i < rq->n_files; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	broker_answer(rfd, &res);
	exec_result_free(&res);
out:
	if (made && remove_tree_at(wdir_fd, name) < 0)
		log_warn(NULL, "cannot remove %s/%s: %s", workdir, name, strerror(errno));
	_exit(0);
}

/* Check one request; 0 when it may run, else -1 after the refusal was sent. */
static int broker_req_check(int rfd, const struct ucred *cr, uid_t runner_uid, const char *buf,
                            size_t n, int flags, struct broker_req *rq)
{
	if (flags & (MSG_TRUNC | MSG_CTRUNC)) {
		broker_refuse(rfd, E2BIG, "request over %zu bytes or with too many descriptors",
		              sizeof *rq + BROKER_STRINGS_MAX);
		return -1;
	}
	/* Only the runner may have us run a program as the scanner user. */
	if (cr == NULL || cr->uid != runner_uid) {
		broker_refuse(rfd, EPERM, "request from uid %ld, not the runner's (%ld)",
		              cr ? (long)cr->uid : -1L, (long)runner_uid);
		return -1;
	}
	if (n < sizeof *rq) {
		broker_refuse(rfd, EPROTO, "request of %zu bytes, shorter than its header", n);
		return -1;
	}
	memcpy(rq, buf, sizeof *rq);
	if (rq->magic != BROKER_MAGIC_REQ || rq->argc < 1 || rq->argc > BROKER_ARGC_MAX ||
	    rq->strings_len != n - sizeof *rq || rq->strings_len > BROKER_STRINGS_MAX ||
	    rq->n_files > BROKER_FILES_MAX || rq->output_max > BROKER_OUTPUT_MAX ||
	    rq->timeout_ms < 0 || rq->grace_ms < 0) {
		broker_refuse(rfd, EPROTO, "malformed request header");
		return -1;
	}
	/* Exactly cwd plus argc words, each NUL-terminated, and nothing after them. */
	size_t nul = 0;
	const char *s = buf + sizeof *rq;
	for (size_t i = 0; i < rq->strings_len; i++)
		nul += s[i] == '\0';
	if (rq->strings_len == 0 || s[rq->strings_len - 1] != '\0' || nul != rq->argc + 1) {
		broker_refuse(rfd, EPROTO, "malformed argv: %zu words for argc %u", nul, rq->argc);
		return -1;
	}
	/* An absolute program: the scanner's PATH is not ours to search. */
	const char *argv0 = s + strlen(s) + 1;
	if (argv0[0] != '/') {
		broker_refuse(rfd, EPROTO, "argv[0] is not an absolute path");
		return -1;
	}
	return 0;
}

int broker_socketpair(int sv[2])
{
	int one = 1;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	/* The kernel then attaches the sender's real uid to every request. */
	if (setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		errno = e;
		return -1;
	}
	return 0;
}

void broker_serve(int fd, uid_t runner_uid, const char *workdir)
{
	int one = 1;
	/* Set already by broker_socketpair; again in case the caller made its own. */
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0)
		die_temp(NULL, "scanner broker: SO_PASSCRED: %s", strerror(errno));
	/* A per-message scan holds one descriptor per part, up to BROKER_FILES_MAX. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGPIPE, SIG_IGN);
	if (exec_sigchld_default() < 0)
		die_temp(NULL, "scanner broker: cannot reset SIGCHLD: %s", strerror(errno));
	int wdir_fd = open(workdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (wdir_fd < 0)
		die_temp(NULL, "scanner broker: cannot open %s: %s", workdir, strerror(errno));
	size_t cap = sizeof(struct broker_req) + BROKER_STRINGS_MAX;
	char *buf = xmalloc(cap);
	size_t running = 0;
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(struct ucred))];
		struct cmsghdr align;
	} u;
	log_info(NULL, "scanner broker: serving as uid %ld in %s", (long)getuid(), workdir);
	for (;;) {
		int st;
		while (running > 0 && waitpid(-1, &st, WNOHANG) > 0)
			running--;
		struct pollfd pf = {.fd = fd, .events = POLLIN};
		int pr = poll(&pf, 1, 1000);
		if (pr < 0 && errno != EINTR)
			die_temp(NULL, "scanner broker: poll: %s", strerror(errno));
		if (pr <= 0)
			continue;
		if (!(pf.revents & POLLIN))
			break; /* every peer has closed its end: spoold and its runners stopped */
		struct iovec iov = {.iov_base = buf, .iov_len = cap};
		struct msghdr mh = {.msg_iov = &iov,
		                    .msg_iovlen = 1,
		                    .msg_control = u.buf,
		                    .msg_controllen = sizeof u.buf};
		ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die_temp(NULL, "scanner broker: recvmsg: %s", strerror(errno));
		}
		if (n == 0 && (pf.revents & POLLHUP))
			break; /* end of file: the last peer closed its end */
		int rfd = -1, extra = 0;
		struct ucred cr, *crp = NULL;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
			    c->cmsg_len >= CMSG_LEN(sizeof cr)) {
				memcpy(&cr, CMSG_DATA(c), sizeof cr);
				crp = &cr;
			} else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				for (size_t i = 0; i < k; i++) {
					int f;
					memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
					if (rfd < 0)
						rfd = f;
					else {
						close(f);
						extra = 1;
					}
				}
			}
		}
		/* The answer goes only to a reply socket of our kind; a request without one
		 * (or with more descriptors) is dropped with a log line. */
		int type = 0;
		socklen_t tl = sizeof type;
		if (rfd >= 0 && (getsockopt(rfd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
		                 type != SOCK_SEQPACKET)) {
			close(rfd);
			rfd = -1;
		}
		if (rfd < 0 || extra) {
			broker_refuse(-1, EPROTO, "request without exactly one reply socket");
			if (rfd >= 0)
				close(rfd);
			continue;
		}
		/* The reply socket is the runner's; a slow reader must not block the broker. */
		int fl = fcntl(rfd, F_GETFL);
		if (fl < 0 || fcntl(rfd, F_SETFL, fl | O_NONBLOCK) < 0) {
			close(rfd);
			continue;
		}
		struct broker_req rq;
		if (broker_req_check(rfd, crp, runner_uid, buf, (size_t)n, mh.msg_flags, &rq) < 0) {
			close(rfd);
			continue;
		}
		if (running >= BROKER_HANDLERS_MAX) {
			broker_refuse(rfd, EAGAIN, "%zu requests running already", running);
			close(rfd);
			continue;
		}
		pid_t pid = fork();
		if (pid < 0) {
			broker_refuse(rfd, errno, "cannot fork: %s", strerror(errno));
			close(rfd);
			continue;
		}
		if (pid == 0) {
			close(fd);
			/* The handler blocks on its own socket (poll-guarded waits). */
			fcntl(rfd, F_SETFL, fl & ~O_NONBLOCK);
			broker_handle(rfd, &rq, buf + sizeof rq, wdir_fd, workdir);
		}
		running++;
		close(rfd);
	}
	while (running > 0 && waitpid(-1, NULL, 0) > 0)
		running--;
	free(buf);
	close(wdir_fd);
}
