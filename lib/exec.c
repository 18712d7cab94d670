/*
 * exec - see exec.h.
 */
#include "exec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker.h"

/* How long the output pipe may stay open after the child exited. */
#define EXEC_DRAIN_MS 500

int exec_sigchld_default(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	return sigaction(SIGCHLD, &sa, NULL);
}

void exec_opts_init(struct exec_opts *o)
{
	memset(o, 0, sizeof *o);
	o->grace_ms = 2000;
	o->output_max = 64 * 1024;
	o->keep_fd = -1;
	o->broker_fd = -1;
	o->cancel_fd = -1;
}

/* In the child, between fork and execve: only async-signal-safe calls. */
static void exec_child(char *const argv[], const struct exec_opts *o, char *const envp[], int outfd,
                       int errpipe)
{
	int err;
	/* A process group of its own, so a timeout kills the scanner and all it spawned. */
	if (setpgid(0, 0) < 0)
		goto fail;
	/* Die with the runner: an orphaned scanner would hold a slot nobody accounts for. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		goto fail;
	if (o->n_place > 0) {
		/* The broker's files go to the fixed numbers BROKER_FD_BASE + i that argv names.
		 * place_fds are all above them (the caller's promise, checked); outfd and
		 * errpipe move above them too, so that no dup2 below overwrites a descriptor
		 * still needed. dup2 clears close-on-exec on the copy: these, and only these,
		 * are inherited. An absent file's number is closed: "/dev/fd/N" is then missing
		 * for the scanner. */
		int top = BROKER_FD_BASE + (int)o->n_place;
		outfd = fcntl(outfd, F_DUPFD_CLOEXEC, top);
		errpipe = fcntl(errpipe, F_DUPFD_CLOEXEC, top);
		if (outfd < 0 || errpipe < 0)
			goto fail;
		for (size_t i = 0; i < o->n_place; i++) {
			int to = BROKER_FD_BASE + (int)i, from = o->place_fds[i];
			if (from >= 0 && from < top) {
				errno = EBADF;
				goto fail;
			}
			if (from >= 0 ? dup2(from, to) < 0 : close(to) < 0 && errno != EBADF)
				goto fail;
		}
	}
	int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (nullfd < 0 || dup2(nullfd, 0) < 0 || dup2(outfd, 1) < 0 || dup2(outfd, 2) < 0)
		goto fail;
	/* Every other descriptor should be O_CLOEXEC already; make sure of it (a descriptor
	 * some process above us inherited without it must not reach a scanner: the keeper's
	 * socket once did). Only keep_fd is inherited, on purpose. An old kernel without
	 * CLOSE_RANGE_CLOEXEC (before 5.11) leaves it to O_CLOEXEC. The broker's placed
	 * files (BROKER_FD_BASE + i, above) stay inherited. */
	(void)close_range(BROKER_FD_BASE + (unsigned)o->n_place, ~0U, CLOSE_RANGE_CLOEXEC);
	if (o->keep_fd >= 0) {
		int fl = fcntl(o->keep_fd, F_GETFD);
		if (fl < 0 || fcntl(o->keep_fd, F_SETFD, fl & ~FD_CLOEXEC) < 0)
			goto fail;
	}
	struct rlimit rl;
	if (o->rlimit_as) {
		rl.rlim_cur = rl.rlim_max = o->rlimit_as;
		if (setrlimit(RLIMIT_AS, &rl) < 0)
			goto fail;
	}
	if (o->rlimit_cpu) {
		rl.rlim_cur = o->rlimit_cpu;
		rl.rlim_max = o->rlimit_cpu + 1;
		if (setrlimit(RLIMIT_CPU, &rl) < 0)
			goto fail;
	}
	if (o->rlimit_nofile) {
		rl.rlim_cur = rl.rlim_max = o->rlimit_nofile;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			goto fail;
	}
	rl.rlim_cur = rl.rlim_max = 0;
	setrlimit(RLIMIT_CORE, &rl); /* a crashing scanner must not fill the spool's disk */
	if (o->cwd && chdir(o->cwd) < 0)
		goto fail;
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	signal(SIGCHLD, SIG_DFL); /* the scanner may wait for children of its own */
	execve(argv[0], argv, (char **)envp);
fail:
	err = errno;
	if (write(errpipe, &err, sizeof err) < 0) {
		/* nothing left to do */
	}
	_exit(127);
}

static void exec_kill_group(pid_t pid, int sig)
{
	/* The group may be gone already; ESRCH is expected then. */
	if (kill(-pid, sig) < 0 && errno == ESRCH)
		kill(pid, sig);
}

/* One run being watched, between the fork and the reap. */
struct exec_watch {
	pid_t pid;
	int pidfd; /* -1: none (old kernel) */
	int out;   /* read end of the output pipe */
	int cancel;
	int grace;
	int64_t deadline; /* -1: none */
	int64_t kill_at;  /* -1: not yet; -2: SIGKILL sent */
	int64_t drain_until;
	int status;
	int reaped;
};

/* The deadline and the grace after SIGTERM, while reading: send what is due and return how
 * long poll may wait (-1: no limit). */
static int exec_watch_deadline(struct exec_watch *w, struct exec_result *res, int64_t now)
{
	int wait_ms = -1;
	if (w->deadline >= 0 && !res->timed_out && !w->reaped) {
		if (now >= w->deadline) {
			res->timed_out = 1;
			exec_kill_group(w->pid, SIGTERM);
			w->kill_at = now + w->grace;
		} else {
			wait_ms = (int)(w->deadline - now);
		}
	}
	if (w->kill_at >= 0 && !w->reaped) {
		if (now >= w->kill_at) {
			exec_kill_group(w->pid, SIGKILL);
			w->kill_at = -2; /* sent; now only wait for EOF */
			wait_ms = 1000;
		} else {
			wait_ms = (int)(w->kill_at - now);
		}
	}
	return wait_ms;
}

/* Keep what fits of r bytes of output under o->output_max; the rest marks it truncated. */
static void exec_output_keep(struct exec_result *res, const struct exec_opts *o, const char *tmp,
                             ssize_t r)
{
	size_t keep = 0;
	if (res->output.len < o->output_max) {
		keep = o->output_max - res->output.len;
		if (keep > (size_t)r)
			keep = (size_t)r;
		buf_add(&res->output, tmp, keep);
	}
	if (keep < (size_t)r)
		res->output_truncated = 1;
}

/* The child exited (its pidfd is readable): reap it, then drain the pipe for a while. */
static void exec_watch_reap(struct exec_watch *w, struct exec_result *res)
{
	pid_t r = waitpid(w->pid, &w->status, WNOHANG);
	if (r == w->pid || (r < 0 && errno != EINTR)) {
		if (r < 0) {
			/* Never a status we did not get (an inherited SIGCHLD
			 * SIG_IGN reaps children behind our back: ECHILD). */
			res->wait_failed = 1;
			res->wait_errno = errno;
		}
		w->reaped = 1;
		/* Its own output is already in the pipe: read on until EOF,
		 * for a short while only. */
		w->drain_until = now_ms_monotonic() + EXEC_DRAIN_MS;
	}
}

/* Read the child's output until EOF, the deadline (SIGTERM, then SIGKILL), a cancel, or
 * the drain time after its exit. */
static void exec_output_read(struct exec_watch *w, const struct exec_opts *o,
                             struct exec_result *res)
{
	char tmp[8192];
	for (;;) {
		int64_t now = now_ms_monotonic();
		int wait_ms = exec_watch_deadline(w, res, now);
		if (w->reaped && now >= w->drain_until) {
			/* Past the drain time: one last look without waiting. EOF means the
			 * output was complete; anything else (a descendant still writing, or
			 * holding the pipe) means it may not be. */
			struct pollfd last = {.fd = w->out, .events = POLLIN};
			ssize_t r = poll(&last, 1, 0) == 1 ? read(w->out, tmp, sizeof tmp) : -1;
			if (r != 0)
				res->output_truncated = 1;
			break;
		}
		if (w->reaped)
			wait_ms = (int)(w->drain_until - now);
		/* While the child lives, its pidfd wakes us when it exits: a descendant that
		 * keeps the pipe open (a daemonized grandchild) must not keep us reading. */
		/* The broker's handler also watches its reply socket (cancel_fd): the runner
		 * that asked has gone, and nobody will read this answer. */
		struct pollfd pfd[3] = {
		    {.fd = w->out, .events = POLLIN},
		    {.fd = w->pidfd >= 0 && !w->reaped ? w->pidfd : -1, .events = POLLIN},
		    {.fd = w->cancel, .events = POLLIN}};
		nfds_t nfds = 3;
		int pr = poll(pfd, nfds, wait_ms);
		if (pr < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pr == 0) {
			if (w->reaped) {
				/* The child is gone, yet something it left still holds the pipe:
				 * whatever it writes later is not part of this answer, and what we
				 * have may not be all of it. Incomplete counts as truncated. */
				res->output_truncated = 1;
				break;
			}
			if (w->kill_at == -2)
				break; /* a grandchild keeps the pipe open after SIGKILL: stop
				          reading */
			continue;
		}
		if (pfd[2].revents) {
			exec_kill_group(w->pid, SIGKILL);
			w->cancel = -1;
			if (w->kill_at != -2) {
				w->kill_at = -2;
				continue;
			}
		}
		if (pfd[1].fd >= 0 && pfd[1].revents)
			exec_watch_reap(w, res);
		if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		ssize_t r = read(w->out, tmp, sizeof tmp);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			break;
		}
		if (r == 0)
			break;
		exec_output_keep(res, o, tmp, r);
	}
}

/* The pipe closed: the child has exited or closed its output. Wait for it, still under the
 * deadline: a child that closed stdout and hangs must not hang us. */
static void exec_watch_wait(struct exec_watch *w, struct exec_result *res)
{
	int backoff_us = 100;
	while (!w->reaped) {
		pid_t r = waitpid(w->pid, &w->status, WNOHANG);
		if (r == w->pid)
			break;
		if (r < 0 && errno != EINTR) {
			/* Not a status: never read as exit 0 (clean). */
			res->wait_failed = 1;
			res->wait_errno = errno;
			break;
		}
		int64_t now = now_ms_monotonic();
		if (w->deadline >= 0 && !res->timed_out && now >= w->deadline) {
			res->timed_out = 1;
			exec_kill_group(w->pid, SIGTERM);
			w->kill_at = now + w->grace;
		}
		if (w->kill_at >= 0 && now >= w->kill_at) {
			exec_kill_group(w->pid, SIGKILL);
			w->kill_at = -2;
		}
		int64_t until = w->kill_at >= 0                       ? w->kill_at
		                : w->deadline >= 0 && !res->timed_out ? w->deadline
		                                                      : -1;
		int wait_ms = until < 0 ? 1000 : (int)(until - now > 1000 ? 1000 : until - now + 1);
		if (w->pidfd >= 0) {
			struct pollfd pp = {.fd = w->pidfd, .events = POLLIN};
			poll(&pp, 1, wait_ms);
		} else {
			/* No pidfds (old kernel): short naps first, since most children are
			 * reaped within microseconds of closing their output. */
			usleep((useconds_t)backoff_us);
			if (backoff_us < 5000)
				backoff_us *= 2;
		}
	}
}

/* How the child ended, and whether its execve failed (the errno it wrote to errpipe). */
static void exec_result_fill(struct exec_result *res, int status, int errpipe)
{
	if (res->wait_failed) {
		/* exited stays 0: no exit code, so no clean and no infected. */
	} else if (WIFEXITED(status)) {
		res->exited = 1;
		res->exit_code = WEXITSTATUS(status);
	} else if (WIFSIGNALED(status)) {
		res->signaled = 1;
		res->signo = WTERMSIG(status);
	}
	int child_errno;
	ssize_t er = read(errpipe, &child_errno, sizeof child_errno);
	if (er == (ssize_t)sizeof child_errno) {
		res->exec_failed = 1;
		res->exec_errno = child_errno;
	}
}

int exec_run(char *const argv[], const struct exec_opts *o, struct exec_result *res)
{
	if (o->broker_fd >= 0)
		return broker_run(o->broker_fd, argv, o, res);
	int outp[2] = {-1, -1}, errp[2] = {-1, -1};
	/* Built before the fork: the child may only make async-signal-safe calls. */
	char tmpenv[PATH_MAX + 16];
	char *envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C", "LC_ALL=C", NULL, NULL};
	if (o->tmpdir && bsnprintf(tmpenv, sizeof tmpenv, "TMPDIR=%s", o->tmpdir) == 0)
		envp[3] = tmpenv;
	memset(res, 0, sizeof *res);
	buf_init(&res->output);
	if (pipe2(outp, O_CLOEXEC) < 0)
		return -1;
	if (pipe2(errp, O_CLOEXEC) < 0)
		goto fail;
	int64_t start = now_ms_monotonic();
	pid_t pid = fork();
	if (pid < 0)
		goto fail;
	if (pid == 0)
		exec_child(argv, o, envp, outp[1], errp[1]);
	/* Also set the group from the parent: whichever runs first, kill(-pid) works. */
	setpgid(pid, pid);
	/* A pidfd becomes readable when the child exits, so the reap below can sleep in
	 * poll() instead of napping in fixed steps. It is close-on-exec by construction. */
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	close(outp[1]);
	close(errp[1]);
	outp[1] = errp[1] = -1;

	struct exec_watch w = {
	    .pid = pid,
	    .pidfd = pidfd,
	    .out = outp[0],
	    .cancel = o->cancel_fd,
	    .grace = o->grace_ms > 0 ? o->grace_ms : 2000,
	    .deadline = o->timeout_ms > 0 ? start + o->timeout_ms : -1,
	    .kill_at = -1,
	    .drain_until = -1,
	};
	exec_output_read(&w, o, res);
	close(outp[0]);
	outp[0] = -1;
	exec_watch_wait(&w, res);
	/* Reap the group's stragglers' signal target too: nothing of it may outlive us. */
	exec_kill_group(pid, SIGKILL);
	if (pidfd >= 0)
		close(pidfd);
	res->ms = (long)(now_ms_monotonic() - start);
	exec_result_fill(res, w.status, errp[0]);
	close(errp[0]);
	return 0;
fail:;
	int e = errno;
	for (int i = 0; i < 2; i++) {
		if (outp[i] >= 0)
			close(outp[i]);
		if (errp[i] >= 0)
			close(errp[i]);
	}
	errno = e;
	return -1;
}

void exec_result_free(struct exec_result *res)
{
	buf_free(&res->output);
}

void exec_result_describe(const struct exec_result *res, char *out, size_t len)
{
	if (res->not_started)
		snprintf(out, len, "not-started");
	else if (res->timed_out)
		snprintf(out, len, "timeout");
	else if (res->wait_failed)
		snprintf(out, len, "wait:%s",
		         strerrorname_np(res->wait_errno) ? strerrorname_np(res->wait_errno) : "?");
	else if (res->exec_failed)
		snprintf(out, len, "exec:%s",
		         strerrorname_np(res->exec_errno) ? strerrorname_np(res->exec_errno) : "?");
	else if (res->signaled)
		snprintf(out, len, "sig:%d", res->signo);
	else
		snprintf(out, len, "%d", res->exit_code);
}
