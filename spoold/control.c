/*
 * control - spoold's side of the control socket run/control (protocol in lib/control.h).
 *
 * Up to CTL_MAX clients are read at once, none of them ever waited for: the listening
 * socket and every client are non-blocking and read when spoold's poll says so, each
 * client with one deadline from accept to reply (CONTROL_DEADLINE_MS). A complete request
 * line goes to sup_control_do (spoold.c, which acts on the stages); run/status is
 * rewritten, then the reply line is sent and the client closed.
 *
 * DIAGNOSTICS
 *   Nothing here dies or returns an error: a client that fails (accept, read, send) or
 *   runs past its deadline is logged with its uid and pid and closed; the supervisor goes
 *   on.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"
#include "log.h"
#include "spoold.h"
#include "util.h"

struct ctl_client sup_ctl[CTL_MAX];

void sup_ctl_init(void)
{
	for (int i = 0; i < CTL_MAX; i++)
		sup_ctl[i].fd = -1;
}

void sup_ctl_close(struct ctl_client *cl)
{
	close(cl->fd);
	cl->fd = -1;
	cl->n = 0;
}

/* One reply line, then close. The socket buffer takes a line this short at once; a client
 * that does not read is not waited for either. */
static void sup_ctl_reply(struct ctl_client *cl, struct buf *reply)
{
	buf_addstr(reply, "\n");
	ssize_t w = send(cl->fd, reply->data, reply->len, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (w != (ssize_t)reply->len)
		log_warn(NULL, "control socket reply to uid %ld pid %ld: %s", (long)cl->cred.uid,
		         (long)cl->cred.pid, w < 0 ? strerror(errno) : "short write");
	sup_ctl_close(cl);
}

void sup_control_accept(int lfd)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR)
			log_warn(NULL, "control socket accept: %s", strerror(errno));
		return;
	}
	struct ucred cred = {.pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1};
	socklen_t cl_len = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl_len) < 0)
		log_warn(NULL, "control socket SO_PEERCRED: %s", strerror(errno));
	int slot = -1;
	for (int i = 0; i < CTL_MAX && slot < 0; i++)
		if (sup_ctl[i].fd < 0)
			slot = i;
	if (slot < 0) {
		/* Every slot taken by a client still talking: this one is refused at once rather
		 * than queued behind them. */
		static const char busy[] = "error busy: too many control clients\n";
		log_warn(NULL, "control: refused uid %ld pid %ld: %d clients pending",
		         (long)cred.uid, (long)cred.pid, CTL_MAX);
		ssize_t w = send(fd, busy, sizeof busy - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
		(void)w;
		close(fd);
		return;
	}
	struct ctl_client *cl = &sup_ctl[slot];
	cl->fd = fd;
	cl->cred = cred;
	cl->n = 0;
	cl->deadline = now_ms_monotonic() + CONTROL_DEADLINE_MS;
}

/* Read what is there; act once the line is complete. */
void sup_ctl_read(struct ctl_client *cl)
{
	for (;;) {
		ssize_t r = read(cl->fd, cl->line + cl->n, sizeof cl->line - 1 - cl->n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return;
		if (r <= 0) {
			log_warn(NULL, "control: uid %ld pid %ld closed without a request%s%s",
			         (long)cl->cred.uid, (long)cl->cred.pid, r < 0 ? ": " : "",
			         r < 0 ? strerror(errno) : "");
			sup_ctl_close(cl);
			return;
		}
		cl->n += (size_t)r;
		if (memchr(cl->line, '\n', cl->n) || cl->n == sizeof cl->line - 1)
			break;
	}
	cl->line[cl->n] = '\0';
	struct buf reply;
	buf_init(&reply);
	char *nl = strchr(cl->line, '\n');
	char *sp = strchr(cl->line, ' ');
	if (nl == NULL || sp == NULL || sp > nl) {
		log_warn(NULL, "control: malformed request from uid %ld pid %ld",
		         (long)cl->cred.uid, (long)cl->cred.pid);
		buf_addstr(&reply, "error malformed request");
	} else {
		*nl = '\0';
		*sp = '\0';
		log_info(NULL, "control: request from uid %ld pid %ld", (long)cl->cred.uid,
		         (long)cl->cred.pid);
		sup_control_do(cl->line, sp + 1, &reply);
	}
	/* run/status first: whoever got "ok" may look at it at once. */
	sup_status_write();
	sup_ctl_reply(cl, &reply);
	buf_free(&reply);
}

/* Clients past their deadline: told so and closed. Returns the ms until the next
 * deadline, or -1 when no client is pending. */
int64_t sup_ctl_expire(void)
{
	int64_t now = now_ms_monotonic(), next = -1;
	for (int i = 0; i < CTL_MAX; i++) {
		struct ctl_client *cl = &sup_ctl[i];
		if (cl->fd < 0)
			continue;
		if (now >= cl->deadline) {
			log_warn(NULL,
			         "control: uid %ld pid %ld sent no complete request within %d ms; "
			         "closed",
			         (long)cl->cred.uid, (long)cl->cred.pid, CONTROL_DEADLINE_MS);
			struct buf reply;
			buf_init(&reply);
			buf_addstr(&reply, "error timeout: no complete request");
			sup_ctl_reply(cl, &reply);
			buf_free(&reply);
			continue;
		}
		if (next < 0 || cl->deadline - now < next)
			next = cl->deadline - now;
	}
	return next;
}
