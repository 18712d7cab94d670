/*
 * keeper - one small process per stage user: it starts, signals and reaps, for spoold, the
 * stage processes that run as that user (spoold.h).
 *
 * Why it exists: spoold leaves root for good once it has started, so it can neither start
 * a stage as another user nor signal a process of another uid. Each keeper is forked by
 * spoold while it is still root, becomes its user once (lib/user.c), and then does for
 * spoold what spoold does for the stages of its own user: fork, execveat, kill, waitpid.
 * It executes the binaries spoold opened as root at start (descriptors passed with each
 * request), so a stage user needs no access to the directory they were installed or built
 * in, and a stage cannot choose what its keeper runs. It holds nothing else: every other
 * descriptor is closed at its start (the spool lock above all: a keeper that outlived
 * spoold must not keep the spool locked).
 *
 * Trust: a compromised stage has its keeper's uid and may kill it or send it nonsense;
 * it cannot reach spoold's side of the socket. A keeper signals only its own live
 * children, whatever it is asked. spoold reads fixed-size records and ignores pids that
 * are not its children's.
 *
 * Protocol (SOCK_SEQPACKET: one record per packet, never split or merged): *   spoold -> keeper
 * SPAWN slot flags, "argv0\0argv1\0...", SCM_RIGHTS {exe[, ready][, broker]} keeper -> spoold  PID
 * slot pid, or FAIL slot errno spoold -> keeper  KILL pid sig keeper -> spoold  EXIT pid status
 * (waitpid's) A keeper whose socket closes (spoold is gone) exits and leaves its stages running, as
 * spoold's own children are left when it dies; the next spoold's stages and these share
 * the spool by flock(2) as any two instances do.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker.h"
#include "log.h"
#include "spoold.h"
#include "user.h"
#include "util.h"

enum { KOP_SPAWN = 1, KOP_PID, KOP_FAIL, KOP_KILL, KOP_EXIT };

struct keeper_msg {
	int32_t op;
	int32_t slot;
	int32_t pid;
	int32_t arg; /* SPAWN: KEEPER_F_* flags; errno, signal or wait status */
};

/* SPAWN flags: which descriptors follow the exe (in this order), and SPOOLD_PAUSED. */
#define KEEPER_F_PAUSED 1
#define KEEPER_F_READY  2
#define KEEPER_F_BROKER 4

#define KEEPER_ARGV_MAX  16
#define KEEPER_ARGS_SIZE 4096
#define KEEPER_KIDS_MAX  1024
#define KEEPER_REPLY_MS  5000

/* ---- the keeper process ------------------------------------------------------------ */

static pid_t keeper_kids[KEEPER_KIDS_MAX];
static size_t keeper_nkids;

static void keeper_send(int fd, int op, int slot, pid_t pid, int arg)
{
	struct keeper_msg m = {op, slot, (int32_t)pid, arg};
	/* MSG_NOSIGNAL: a spoold that is gone ends the keeper by the read side, not SIGPIPE. */
	if (send(fd, &m, sizeof m, MSG_NOSIGNAL) != (ssize_t)sizeof m)
		log_warn(NULL, "keeper: cannot reply to spoold: %s", strerror(errno));
}

static int keeper_is_kid(pid_t pid)
{
	for (size_t i = 0; i < keeper_nkids; i++)
		if (keeper_kids[i] == pid)
			return 1;
	return 0;
}

static void keeper_kid_forget(pid_t pid)
{
	for (size_t i = 0; i < keeper_nkids; i++)
		if (keeper_kids[i] == pid) {
			keeper_kids[i] = keeper_kids[--keeper_nkids];
			return;
		}
}

/* In the forked child: the stage's environment, then the binary spoold opened. */
static noreturn void keeper_exec(int exe, int ready, int broker, int paused, char **argv)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (ready >= 0) {
		/* The one descriptor a stage inherits on purpose, blocking (as spoold gives it). */
		char num[16];
		fcntl(ready, F_SETFL, 0);
		fcntl(ready, F_SETFD, 0);
		snprintf(num, sizeof num, "%d", ready);
		setenv("SPOOLD_READY_FD", num, 1);
	}
	if (broker >= 0) {
		/* The scanner broker's socket, for the scanner-runner (spoold/broker.c). */
		char num[16];
		fcntl(broker, F_SETFD, 0);
		snprintf(num, sizeof num, "%d", broker);
		setenv(BROKER_ENV, num, 1);
	}
	if (paused)
		setenv("SPOOLD_PAUSED", "1", 1);
	else
		unsetenv("SPOOLD_PAUSED");
	extern char **environ;
	execveat(exe, "", argv, environ, AT_EMPTY_PATH);
	fprintf(stderr, "spoold keeper: cannot exec %s: %s\n", argv[0], strerror(errno));
	_exit(EXIT_TEMPFAIL);
}

static void keeper_spawn_do(int sock, const struct keeper_msg *m, char *args, size_t alen,
                            const int fds[3])
{
	int exe = fds[0], k = 1;
	int ready = m->arg & KEEPER_F_READY ? fds[k++] : -1;
	int broker = m->arg & KEEPER_F_BROKER ? fds[k++] : -1;
	char *argv[KEEPER_ARGV_MAX + 1];
	size_t argc = 0;
	int err = 0;
	/* The strings come from spoold, but bound them as if they did not. */
	if (alen == 0 || args[alen - 1] != '\0' || exe < 0 ||
	    ((m->arg & KEEPER_F_READY) && ready < 0) || ((m->arg & KEEPER_F_BROKER) && broker < 0))
		err = EINVAL;
	for (size_t off = 0; !err && off < alen; off += strlen(args + off) + 1) {
		if (argc == KEEPER_ARGV_MAX) {
			err = E2BIG;
			break;
		}
		argv[argc++] = args + off;
	}
	argv[argc] = NULL;
	if (!err && keeper_nkids == KEEPER_KIDS_MAX)
		err = EAGAIN;
	pid_t pid = err ? -1 : fork();
	if (pid == 0)
		keeper_exec(exe, ready, broker, m->arg & KEEPER_F_PAUSED, argv);
	if (pid < 0 && !err)
		err = errno;
	if (pid > 0)
		keeper_kids[keeper_nkids++] = pid;
	keeper_send(sock, err ? KOP_FAIL : KOP_PID, m->slot, pid, err);
}

/* One request; -1 when the socket is closed or broken. */
static int keeper_request(int sock)
{
	struct keeper_msg m;
	char args[KEEPER_ARGS_SIZE];
	struct iovec iov[2] = {{&m, sizeof m}, {args, sizeof args}};
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(3 * sizeof(int))];
	} cm;
	struct msghdr mh = {.msg_iov = iov,
	                    .msg_iovlen = 2,
	                    .msg_control = cm.buf,
	                    .msg_controllen = sizeof cm.buf};
	ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return n < 0 && errno == EINTR ? 0 : -1;
	int fds[3] = {-1, -1, -1};
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			memcpy(fds, CMSG_DATA(c), (k > 3 ? 3 : k) * sizeof(int));
		}
	if ((size_t)n >= sizeof m && !(mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		if (m.op == KOP_SPAWN)
			keeper_spawn_do(sock, &m, args, (size_t)n - sizeof m, fds);
		else if (m.op == KOP_KILL && keeper_is_kid(m.pid))
			/* Only a live child of ours: never a pid spoold's side did not start here.
			 */
			kill(m.pid, m.arg);
	}
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return 0;
}

static noreturn void keeper_main(int sock, const char *user, int lease)
{
	/* Only the socket survives: not the spool lock, the control socket, other keepers'
	 * sockets or anything else spoold had open. */
	if (sock != 3) {
		/* dup2 clears close-on-exec: set it again, or every stage this keeper starts
		 * (and every scanner those start) would inherit the keeper's socket. */
		if (dup2(sock, 3) < 0 || fcntl(3, F_SETFD, FD_CLOEXEC) < 0)
			_exit(EXIT_TEMPFAIL);
		sock = 3;
	}
	close_range(4, ~0U, 0);
	log_init("spoold-keeper");
	if (lease)
		user_become_with_lease(user);
	else
		user_become(user, (gid_t)-1);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	/* Blocked, not acted on: spoold's signals are for spoold; a keeper only stops when its
	 * socket closes. */
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	int sfd = signalfd(-1, &chld, SFD_CLOEXEC);
	if (sfd < 0)
		die_temp(NULL, "keeper: signalfd: %s", strerror(errno));
	log_info(NULL, "keeper for user %s started", user);
	for (;;) {
		struct pollfd p[2] = {{.fd = sock, .events = POLLIN},
		                      {.fd = sfd, .events = POLLIN}};
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			die_temp(NULL, "keeper: poll: %s", strerror(errno));
		if (p[1].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof si) < 0 && errno != EAGAIN)
				die_temp(NULL, "keeper: signalfd read: %s", strerror(errno));
		}
		int status;
		pid_t pid;
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			keeper_kid_forget(pid);
			keeper_send(sock, KOP_EXIT, -1, pid, status);
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
			if (keeper_request(sock) < 0)
				_exit(0);
	}
}

/* ---- spoold's side ------------------------------------------------------------------ */

int keeper_start(struct keeper *k, const char *user, int lease)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		die_temp(NULL, "cannot make a socket pair for the keeper of %s: %s", user,
		         strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		die_temp(NULL, "cannot fork the keeper of %s: %s", user, strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		keeper_main(sv[1], user, lease);
	}
	close(sv[1]);
	*k = (struct keeper){.fd = sv[0], .pid = pid};
	bsnprintf(k->user, sizeof k->user, "%s", user);
	return 0;
}

/* Read one record without blocking (or with a deadline); 1 read, 0 none, -1 gone. */
static int keeper_read(struct keeper *k, struct keeper_msg *m, int timeout_ms)
{
	struct pollfd p = {.fd = k->fd, .events = POLLIN};
	int r = poll(&p, 1, timeout_ms);
	if (r < 0)
		return errno == EINTR ? 0 : -1;
	if (r == 0)
		return 0;
	ssize_t n = recv(k->fd, m, sizeof *m, MSG_DONTWAIT);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
		return -1;
	return n == (ssize_t)sizeof *m;
}

int keeper_drain(struct keeper *k, void (*on_exit)(pid_t, int))
{
	if (k->fd < 0)
		return -1;
	struct keeper_msg m;
	int r;
	while ((r = keeper_read(k, &m, 0)) > 0)
		if (m.op == KOP_EXIT)
			on_exit(m.pid, m.arg);
	return r < 0 ? -1 : 0;
}

pid_t keeper_spawn(struct keeper *k, int slot, int exe, char *const argv[], int ready, int broker,
                   int paused, void (*on_exit)(pid_t, int))
{
	char args[KEEPER_ARGS_SIZE];
	size_t len = 0;
	for (size_t i = 0; argv[i]; i++) {
		size_t l = strlen(argv[i]) + 1;
		if (i == KEEPER_ARGV_MAX || len + l > sizeof args) {
			errno = E2BIG;
			return -1;
		}
		memcpy(args + len, argv[i], l);
		len += l;
	}
	int fds[3] = {exe, -1, -1}, nfd = 1;
	int flags = paused ? KEEPER_F_PAUSED : 0;
	if (ready >= 0) {
		fds[nfd++] = ready;
		flags |= KEEPER_F_READY;
	}
	if (broker >= 0) {
		fds[nfd++] = broker;
		flags |= KEEPER_F_BROKER;
	}
	struct keeper_msg m = {KOP_SPAWN, slot, 0, flags};
	struct iovec iov[2] = {{&m, sizeof m}, {args, len}};
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(3 * sizeof(int))];
	} cm;
	memset(&cm, 0, sizeof cm);
	struct msghdr mh = {.msg_iov = iov,
	                    .msg_iovlen = 2,
	                    .msg_control = cm.buf,
	                    .msg_controllen = CMSG_SPACE(nfd * sizeof(int))};
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(nfd * sizeof(int));
	memcpy(CMSG_DATA(c), fds, nfd * sizeof(int));
	if (sendmsg(k->fd, &mh, MSG_NOSIGNAL) < 0)
		return -1;
	/* The answer comes before anything else about this slot; exits of other stages that
	 * arrive meanwhile are handed on as they come. */
	int64_t deadline = now_ms_monotonic() + KEEPER_REPLY_MS;
	for (;;) {
		int64_t left = deadline - now_ms_monotonic();
		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		int r = keeper_read(k, &m, (int)left);
		if (r < 0) {
			errno = EPIPE;
			return -1;
		}
		if (r == 0)
			continue;
		if (m.op == KOP_EXIT)
			on_exit(m.pid, m.arg);
		else if (m.op == KOP_PID && m.slot == slot && m.pid > 0)
			return m.pid;
		else if (m.op == KOP_FAIL && m.slot == slot) {
			errno = m.arg > 0 ? m.arg : EIO;
			return -1;
		}
	}
}

void keeper_kill(struct keeper *k, pid_t pid, int sig)
{
	struct keeper_msg m = {KOP_KILL, -1, (int32_t)pid, sig};
	if (k->fd >= 0 && send(k->fd, &m, sizeof m, MSG_NOSIGNAL) < 0)
		log_warn(NULL, "cannot ask the keeper of %s to signal pid %ld: %s", k->user,
		         (long)pid, strerror(errno));
}
