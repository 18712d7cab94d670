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
	CURL *c = curl_easy_init();
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
	curl_slist_free_all(rcpts);
	curl_easy_cleanup(c);
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
	};
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
		die_temp(NULL, "curl_global_init failed");
	int rc = connector_main(&cn, argc, argv);
	curl_global_cleanup();
	return rc;
}
