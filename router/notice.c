/*
 * notice - notification messages as outbox entries of their own.
 *
 * A notice is built in tmp/<qid>/ (message, envelope, trace, each fsync'd, then the
 * directory) and enters outbox/<conn>/ by one rename, the same contract as routed mail
 * (docs/OUTBOX.md): a delivery agent never sees half a notice. A crash before the rename
 * leaves only tmp/ debris and no notice: notices are at most once, never duplicated.
 *
 * router_notify decides who is told (the admin, the recipients per connector; never the
 * sender) and builds each notice from safe bytes only.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "entry_names.h"
#include "log.h"
#include "router.h"
#include "trace.h"

int notice_write(struct spool *sp, const char *conn, const struct envelope *env, const char *msg,
                 size_t len, const char *about_qid, char qid_out[SPOOL_QID_LEN + 1])
{
	int dfd = -1, ofd = -1, tfd = -1, rc = -1, err;
	struct buf eb;
	buf_init(&eb);
	for (int tries = 0;; tries++) {
		spool_qid_new(qid_out);
		if (mkdirat(sp->fd[SD_TMP], qid_out, 0770) == 0)
			break;
		if (errno != EEXIST || tries > 100)
			goto out;
	}
	dfd = openat(sp->fd[SD_TMP], qid_out, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		goto out;
	envelope_format(env, &eb);
	if (write_file_atomic(dfd, ENTRY_MESSAGE, msg, len, 0640) < 0 ||
	    write_file_atomic(dfd, ENTRY_ENVELOPE, eb.data, eb.len, 0640) < 0)
		goto out;
	trace_add(dfd, qid_out, "notice about=%s connector=%s", about_qid, conn);
	tfd = openat(dfd, ENTRY_TRACE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (tfd < 0 || fsync(tfd) < 0 || fsync_dir(dfd) < 0)
		goto out;
	ofd = spool_outbox_open(sp, conn);
	if (ofd < 0)
		goto out;
	/* The commit: the complete entry appears in the outbox at once. */
	if (renameat(sp->fd[SD_TMP], qid_out, ofd, qid_out) < 0)
		goto out;
	if (fsync_dir(ofd) < 0 || fsync_dir(sp->fd[SD_TMP]) < 0)
		goto out;
	rc = 0;
out:
	err = errno;
	if (rc < 0 && dfd >= 0)
		remove_tree_at(sp->fd[SD_TMP], qid_out);
	if (tfd >= 0)
		close(tfd);
	if (dfd >= 0)
		close(dfd);
	if (ofd >= 0)
		close(ofd);
	buf_free(&eb);
	errno = err;
	return rc;
}

/* An address for a notice's header: the bytes an RFC 5321 address is made of pass, any
 * other (a CR, a LF, a space, '<', '>', ',', a quote) becomes '?', so an address from an
 * envelope can neither end the field, nor add a header, nor add a second address. */
static void router_hdr_addr(struct buf *h, const char *s)
{
	for (size_t i = 0; s[i] && i < 254; i++) {
		char c = s[i];
		int ok = isalnum((unsigned char)c) || (c && strchr("!#$%&'*+-/=?^_`{|}~.@", c));
		buf_add(h, ok ? &c : "?", 1);
	}
}

/* One notice as an RFC 5322 message. Its header fields are built only from safe bytes:
 * addresses through router_hdr_addr, the subject through router_hdr_text, the rest the
 * router's own (host name filtered, queue ID, date). The body is passed through
 * router_text_block: whatever a caller quoted, a notice holds no control byte but its
 * line breaks, and nothing in the body can reach the header block. */
static void router_notice_one(struct stage *st, const char *about, const char *conn,
                              const struct envelope *to, const char *subject, const char *body)
{
	const struct conf_router *rc = &st->conf->router;
	char host[256], date[64], qid[SPOOL_QID_LEN + 1];
	if (gethostname(host, sizeof host) < 0)
		strcpy(host, "localhost");
	host[sizeof host - 1] = '\0';
	for (char *h = host; *h; h++)
		if (!isalnum((unsigned char)*h) && *h != '.' && *h != '-')
			*h = '-';
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
	struct buf m, rl;
	buf_init(&m);
	buf_init(&rl);
	for (size_t i = 0; i < to->n_rcpts; i++) {
		buf_addstr(&rl, i ? ", <" : "<");
		router_hdr_addr(&rl, to->rcpts[i]);
		buf_addstr(&rl, ">");
	}
	buf_addstr(&m, "From: spoold <");
	if (rc->notify_from[0])
		router_hdr_addr(&m, rc->notify_from);
	else
		buf_printf(&m, "MAILER-DAEMON@%s", host);
	buf_printf(&m, ">\nTo: %s\nSubject: ", buf_cstr(&rl));
	router_hdr_text(&m, subject, 200);
	buf_addstr(&m, "\nMessage-ID: <");
	router_hdr_addr(&m, about);
	buf_printf(&m,
	           ".notice.%lld@%s>\nDate: %s\n"
	           "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n"
	           "Content-Transfer-Encoding: 7bit\nAuto-Submitted: auto-generated\n\n",
	           (long long)now_us_wall(), host, date);
	router_text_block(&m, body);
	struct envelope env;
	envelope_init(&env);
	/* The null sender by default: a notice must never bounce back into a loop. */
	env.sender = xstrdup(rc->notify_from);
	for (size_t i = 0; i < to->n_rcpts; i++)
		envelope_add_rcpt(&env, to->rcpts[i]);
	if (notice_write(&st->spool, conn, &env, m.data, m.len, about, qid) < 0)
		log_warn(about, "cannot write a notice into outbox/%s: %s", conn, strerror(errno));
	else
		log_info(about, "notice %s to %s in outbox/%s", qid, buf_cstr(&rl), conn);
	envelope_free(&env);
	buf_free(&m);
	buf_free(&rl);
}

/* Admin and recipient notices for infected or banned mail (off by default). Never to the
 * sender: the envelope sender of virus mail is almost always forged, so a notice would go
 * to an innocent third party (backscatter). */
void router_notify(struct stage *st, const char *qid, const struct envelope *env,
                   const struct verdicts *vs, const char *action, const char *reason,
                   const char *why)
{
	const struct conf *c = st->conf;
	const struct conf_router *rc = &c->router;
	if (!rc->notify_admin[0] && !rc->notify_recipients)
		return;
	struct buf v, s, b, subj;
	buf_init(&v);
	buf_init(&s);
	buf_init(&b);
	buf_init(&subj);
	router_viruses(vs, &v);
	escape_bytes(&s, env->sender, strlen(env->sender), 998);
	if (rc->notify_admin[0]) {
		buf_printf(&subj, "spoold: %s message %s (%s)", reason, qid, action);
		buf_printf(&b,
		           "Queue ID: %s\nAction: %s\nReason: %s\nViruses: %s\nSender: %s\n"
		           "Recipients:\n",
		           qid, action, reason, v.len ? buf_cstr(&v) : "-",
		           s.len ? buf_cstr(&s) : "<>");
		for (size_t i = 0; i < env->n_rcpts; i++) {
			buf_addstr(&b, "  ");
			router_text(&b, env->rcpts[i], 998);
			buf_addstr(&b, "\n");
		}
		buf_printf(&b, "\nDetails (escaped):\n%s", why);
		struct envelope to;
		envelope_init(&to);
		envelope_add_rcpt(&to, rc->notify_admin);
		router_notice_one(st, qid, rc->default_connector, &to, buf_cstr(&subj),
		                  buf_cstr(&b));
		envelope_free(&to);
	}
	if (rc->notify_recipients) {
		for (size_t ci = 0; ci < c->n_connectors; ci++) {
			struct envelope to;
			envelope_init(&to);
			for (size_t i = 0; i < env->n_rcpts; i++)
				if (strcmp(router_connector_for(c, env->rcpts[i]),
				           c->connectors[ci].name) == 0)
					envelope_add_rcpt(&to, env->rcpts[i]);
			if (to.n_rcpts) {
				buf_reset(&b);
				buf_reset(&subj);
				buf_printf(&subj, "A message to you was %s by the virus filter",
				           strcmp(action, "strip") == 0 ? "cleaned" : "stopped");
				buf_printf(
				    &b,
				    "A message to you from %s was stopped or cleaned by the "
				    "virus filter.\n\nQueue ID: %s\nAction: %s\nReason: %s\n"
				    "Viruses: %s\n\nAsk your administrator if you need it.\n",
				    s.len ? buf_cstr(&s) : "<>", qid, action, reason,
				    v.len ? buf_cstr(&v) : "-");
				router_notice_one(st, qid, c->connectors[ci].name, &to,
				                  buf_cstr(&subj), buf_cstr(&b));
			}
			envelope_free(&to);
		}
	}
	buf_free(&v);
	buf_free(&s);
	buf_free(&b);
	buf_free(&subj);
}
