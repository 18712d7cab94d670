/*
 * connector-smtp - relays outbox/<connector>/ entries over SMTP to the connector's next
 * hop, with libcurl: relay = "smtp://HOST:PORT", or, with unix_socket = "/path", an SMTP
 * server on a Unix socket (Postfix's re-injection smtpd in public/, which only the
 * postdrop group, and so the spool user, can reach: docs/postfix.md). A loopback TCP listener takes
 * mail from any local process, unscanned; a socket behind file permissions does not.
 *
 *   connector-smtp [-c CONFIG] -n CONNECTOR [--once]
 *
 * The envelope is kept (MAIL FROM / RCPT TO from the entry's envelope). Every address is
 * checked again (envelope_check) before the dialogue starts: one that could close the
 * "<path>" or add an ESMTP parameter never reaches the wire; the entry is bounced to
 * badmail/ as a permanent failure. An SMTPUTF8 envelope is sent as such by libcurl
 * (it adds SMTPUTF8 to MAIL FROM when an address needs it and the server offers it). A 2xx for the
 * whole transaction removes the entry; a 5xx (any recipient or the data) makes a bounce
 * record in badmail/; anything else - 4xx, a refused connection, a timeout - keeps the
 * entry for a retry with back-off. Bare LF line ends are sent as CRLF; libcurl does the
 * dot-stuffing.
 *
 * Connection reuse: one libcurl handle lives across messages, so its connection cache
 * keeps the SMTP connection open after a delivery and the next message goes over it
 * (Postfix's smtpd and smtp-sink take many messages per connection; a connection per
 * message cost a connect, a greeting, EHLO and QUIT each). Each message is its own MAIL,
 * RCPT..., DATA transaction; none is ever half-done on a connection we reuse, because any
 * result but a 2xx for the whole message closes the connection (curl_easy_cleanup: QUIT
 * when it is still sound) and the next message starts on a fresh one. So no RSET is
 * needed, and a server in a state we do not know is never talked to again. Bounds: a
 * connection idle for SMTP_IDLE_MS is closed (the connector loop calls smtp_idle while it
 * waits, and libcurl refuses to reuse it after that long as well), and one that carried
 * SMTP_REUSE_MAX messages is closed after the last of them. A server that dropped an
 * idle connection is noticed by libcurl before reuse, which then connects anew.
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "connector.h"
#include "envelope.h"
#include "log.h"
#include "util.h"

#define SMTP_IDLE_MS   5000 /* like Postfix's smtp_connection_cache_time_limit, a bit longer */
#define SMTP_REUSE_MAX 100  /* messages per connection */

/* The handle whose connection cache holds the open connection (NULL: none). One connector
 * process delivers one message at a time, so one handle is enough. */
static CURL *smtp_curl;
static int64_t smtp_last_use; /* monotonic ms of the end of the last delivery */
static unsigned smtp_uses;    /* messages delivered over the cached connection */

/* Close the cached connection (QUIT if it is sound) and forget the handle. */
static void smtp_conn_close(void)
{
	if (smtp_curl)
		curl_easy_cleanup(smtp_curl);
	smtp_curl = NULL;
	smtp_uses = 0;
}

/* Called by the connector loop while it waits: close a connection idle for SMTP_IDLE_MS.
 * Returns the ms until it should be called again, -1 when nothing is open. */
static int smtp_idle(void)
{
	if (smtp_curl == NULL)
		return -1;
	int64_t left = smtp_last_use + SMTP_IDLE_MS - now_ms_monotonic();
	if (left > 0)
		return (int)left;
	log_debug(NULL, "closing the SMTP connection, idle for %d ms", SMTP_IDLE_MS);
	smtp_conn_close();
	return -1;
}

struct smtp_reader {
	int fd;
	off_t off;
	int last_cr;
	char buf[32768];
	size_t len, pos;
	int eof, err;
};

/* libcurl pulls the message through here: LF becomes CRLF unless a CR precedes it. */
static size_t smtp_read(char *out, size_t size, size_t nitems, void *arg)
{
	struct smtp_reader *rd = arg;
	size_t cap = size * nitems, n = 0;
	while (n + 2 <= cap) {
		if (rd->pos == rd->len) {
			if (rd->eof)
				break;
			ssize_t r = pread(rd->fd, rd->buf, sizeof rd->buf, rd->off);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				rd->err = errno;
				return CURL_READFUNC_ABORT;
			}
			if (r == 0) {
				rd->eof = 1;
				break;
			}
			rd->off += r;
			rd->len = (size_t)r;
			rd->pos = 0;
		}
		char ch = rd->buf[rd->pos++];
		if (ch == '\n' && !rd->last_cr)
			out[n++] = '\r';
		out[n++] = ch;
		rd->last_cr = ch == '\r';
	}
	return n;
}

/* The next hop's last reply line, for the log: after a good DATA it is the final 250,
 * which names the next hop's own queue ID ("250 2.0.0 Ok: queued as 4Xy7Zq"). libcurl
 * hands every server reply line to the header callback. */
struct smtp_last {
	char line[256];
};

static size_t smtp_header(char *b, size_t size, size_t n, void *u)
{
	struct smtp_last *last = u;
	size_t len = size * n, k = len;
	while (k > 0 && (b[k - 1] == '\n' || b[k - 1] == '\r'))
		k--;
	if (k >= 3 && b[0] >= '2' && b[0] <= '5') {
		if (k >= sizeof last->line)
			k = sizeof last->line - 1;
		memcpy(last->line, b, k);
		last->line[k] = '\0';
	}
	return len;
}

static enum conn_result smtp_deliver(const struct conf_connector *cc, struct outbox_entry *e,
                                     const struct envelope *env, int msgfd, char *reply,
                                     size_t rlen)
{
	(void)e;
	char errbuf[CURL_ERROR_SIZE] = "";
	/* The envelope was checked when it was parsed; this check is the last one before the
	 * addresses become SMTP commands, so it does not depend on how the entry got here. */
	char why[256];
	if (envelope_check(env, why, sizeof why) < 0) {
		snprintf(reply, rlen, "refused before the SMTP dialogue: %s", why);
		return CONN_PERM;
	}
	struct curl_slist *rcpts = NULL;
	struct smtp_reader rd = {.fd = msgfd};
	enum conn_result res = CONN_TEMP;
	/* The handle of the last delivery, its connection still cached, or a new one. Reset:
	 * every option is set below for this message alone; the connection cache stays. */
	if (smtp_curl == NULL)
		smtp_curl = curl_easy_init();
	else
		curl_easy_reset(smtp_curl);
	CURL *c = smtp_curl;
	if (c == NULL) {
		snprintf(reply, rlen, "curl_easy_init failed");
		return CONN_TEMP;
	}
	/* The URL's path is the name libcurl greets with (EHLO). */
	char *url = xasprintf("%s/%s", cc->relay, cc->helo);
	char *from = xasprintf("<%s>", env->sender);
	for (size_t i = 0; i < env->n_rcpts; i++) {
		char *r = xasprintf("<%s>", env->rcpts[i]);
		rcpts = curl_slist_append(rcpts, r);
		free(r);
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	if (cc->unix_socket && cc->unix_socket[0])
		curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, cc->unix_socket);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
	curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
	curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpts);
	curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(c, CURLOPT_READFUNCTION, smtp_read);
	curl_easy_setopt(c, CURLOPT_READDATA, &rd);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)cc->timeout);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	/* libcurl's own idle bound on reuse, the same as smtp_idle's. */
	curl_easy_setopt(c, CURLOPT_MAXAGE_CONN, (long)(SMTP_IDLE_MS / 1000));
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	struct smtp_last last = {.line = ""};
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, smtp_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &last);
	CURLcode rc = curl_easy_perform(c);
	long code = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	if (rc == CURLE_OK) {
		if (last.line[0])
			snprintf(reply, rlen, "%s (%s%s%s)", last.line, cc->relay,
			         cc->unix_socket[0] ? " via " : "", cc->unix_socket);
		else
			snprintf(reply, rlen, "%ld accepted by %s%s%s", code, cc->relay,
			         cc->unix_socket[0] ? " via " : "", cc->unix_socket);
		res = CONN_OK;
	} else {
		snprintf(reply, rlen, "%ld %s", code, errbuf[0] ? errbuf : curl_easy_strerror(rc));
		/* Only the next hop's own 5xx is permanent; our read errors and every network
		 * trouble are worth another try. */
		res = code >= 500 && code <= 599 && !rd.err ? CONN_PERM : CONN_TEMP;
	}
	/* Reuse only a connection whose last transaction ended in a 2xx for the whole
	 * message: after anything else its state is not known, so it goes (see the top). */
	smtp_last_use = now_ms_monotonic();
	if (res != CONN_OK || ++smtp_uses >= SMTP_REUSE_MAX)
		smtp_conn_close();
	else
		/* Nothing of this message's may stay reachable from the handle. */
		curl_easy_reset(c);
	curl_slist_free_all(rcpts);
	free(url);
	free(from);
	return res;
}

int main(int argc, char **argv)
{
	static const struct connector cn = {
	    .prog = "connector-smtp",
	    .type = CONN_SMTP,
	    .deliver = smtp_deliver,
	    .idle = smtp_idle,
	};
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
		die_temp(NULL, "curl_global_init failed");
	int rc = connector_main(&cn, argc, argv);
	smtp_conn_close(); /* QUIT on the way out */
	curl_global_cleanup();
	return rc;
}
