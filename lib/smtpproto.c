/*
 * smtpproto - see smtpproto.h.
 */
#include "smtpproto.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void smtp_sess_init(struct smtp_sess *s, const struct smtp_ops *ops, void *ctx,
                    const char *hostname, uint64_t max_size, size_t max_rcpts)
{
	memset(s, 0, sizeof *s);
	s->ops = ops;
	s->ctx = ctx;
	s->max_size = max_size;
	s->max_rcpts = max_rcpts ? max_rcpts : 1;
	if (s->max_rcpts > ENV_RCPT_MAX)
		s->max_rcpts = ENV_RCPT_MAX;
	s->state = SMTP_S_GREETED;
	envelope_init(&s->env);
	buf_init(&s->xforward);
	buf_init(&s->out);
	/* The host name goes into replies: keep it to one safe token. */
	size_t j = 0;
	for (size_t i = 0; hostname && hostname[i] && j + 1 < sizeof s->hostname; i++) {
		unsigned char ch = (unsigned char)hostname[i];
		if (isalnum(ch) || ch == '.' || ch == '-')
			s->hostname[j++] = (char)ch;
	}
	if (j == 0)
		memcpy(s->hostname, "localhost", (j = 9));
	s->hostname[j] = '\0';
}

static void smtp_reply(struct smtp_sess *s, const char *line)
{
	buf_addstr(&s->out, line);
	buf_addstr(&s->out, "\r\n");
}

/* End the transaction: envelope, XFORWARD attributes and message state go. */
static void smtp_txn_reset(struct smtp_sess *s)
{
	if (s->state == SMTP_S_DATA && s->ops->data_abort)
		s->ops->data_abort(s->ctx);
	envelope_free(&s->env);
	s->n_rcpt_ok = 0;
	s->data_size = 0;
	s->data_fail = NULL;
	buf_reset(&s->xforward);
	if (s->state != SMTP_S_GREETED && s->state != SMTP_S_CLOSED)
		s->state = SMTP_S_READY;
}

void smtp_sess_free(struct smtp_sess *s)
{
	if (s->state == SMTP_S_DATA && s->ops->data_abort)
		s->ops->data_abort(s->ctx);
	envelope_free(&s->env);
	buf_free(&s->xforward);
	buf_free(&s->out);
	s->state = SMTP_S_CLOSED;
}

void smtp_greet(struct smtp_sess *s)
{
	buf_printf(&s->out, "220 %s ESMTP LMTP spoold\r\n", s->hostname);
}

void smtp_close_with(struct smtp_sess *s, const char *reply)
{
	if (s->state == SMTP_S_DATA && s->ops->data_abort)
		s->ops->data_abort(s->ctx);
	smtp_reply(s, reply);
	s->state = SMTP_S_CLOSED;
}

static void smtp_error(struct smtp_sess *s, const char *reply)
{
	smtp_reply(s, reply);
	/* A client that sends nothing but errors is not a mail client: bounded work. */
	if (++s->errors >= SMTP_MAX_ERRORS)
		smtp_close_with(s, "421 4.7.0 Too many errors");
}

/* Address characters: printable ASCII without space and angle brackets. Non-ASCII
 * needs SMTPUTF8, which is not offered. */
static int smtp_addr_char(unsigned char ch)
{
	return ch > 0x20 && ch < 0x7f && ch != '<' && ch != '>';
}

int smtp_path_parse(const char *arg, int allow_empty, char *addr, size_t alen, const char **params)
{
	if (arg[0] != '<')
		return -1;
	const char *p = arg + 1;
	size_t n = 0;
	while (p[n] && p[n] != '>') {
		if (!smtp_addr_char((unsigned char)p[n]))
			return -1;
		n++;
	}
	if (p[n] != '>')
		return -1;
	if (n == 0 && !allow_empty)
		return -1;
	/* No source route (RFC 5321 allows and ignores it; nothing we talk to sends one, and
	 * "@a:b@c" means two different things to two parsers). */
	if (n > 0 && p[0] == '@')
		return -1;
	if (n >= alen || n > ENV_ADDR_MAX)
		return -1;
	memcpy(addr, p, n);
	addr[n] = '\0';
	if (envelope_addr_valid(addr) < 0)
		return -1;
	*params = p + n + 1;
	/* After the path: nothing, or one space and parameters. */
	if (**params != '\0' && (**params != ' ' || (*params)[1] == '\0' || (*params)[1] == ' '))
		return -1;
	return 0;
}

/* Parse the MAIL parameters (" KEY=VALUE ..."). 0, or -1 with the reply in *why. */
static int smtp_mail_params(const char *params, uint64_t *size, const char **why)
{
	*size = 0;
	const char *p = params;
	while (*p == ' ') {
		p++;
		const char *end = strchr(p, ' ');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char tok[64];
		if (len == 0 || len >= sizeof tok) {
			*why = "555 5.5.4 Unsupported parameter";
			return -1;
		}
		memcpy(tok, p, len);
		tok[len] = '\0';
		if (strncasecmp(tok, "SIZE=", 5) == 0) {
			/* At most 20 digits, so it fits in 64 bits or is plainly too big. */
			if (strlen(tok + 5) > 19 || parse_u64(tok + 5, size) < 0) {
				*why = "501 5.5.4 Bad SIZE parameter";
				return -1;
			}
		} else if (strcasecmp(tok, "BODY=7BIT") != 0 &&
		           strcasecmp(tok, "BODY=8BITMIME") != 0) {
			*why = "555 5.5.4 Unsupported parameter";
			return -1;
		}
		p += len;
	}
	return 0;
}

/* XFORWARD NAME=v ADDR=v ...: attributes Postfix forwards about the original client.
 * Values are xtext; stored escaped. */
static void smtp_xforward(struct smtp_sess *s, const char *arg)
{
	static const char *const names[] = {"NAME", "ADDR",  "PORT",   "PROTO",
	                                    "HELO", "IDENT", "SOURCE", NULL};
	const char *p = arg;
	struct buf add;
	buf_init(&add);
	while (*p) {
		const char *end = strchr(p, ' ');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		size_t i;
		if (eq == NULL)
			goto bad;
		for (i = 0; names[i]; i++)
			if ((size_t)(eq - p) == strlen(names[i]) &&
			    strncasecmp(p, names[i], strlen(names[i])) == 0)
				break;
		if (names[i] == NULL)
			goto bad;
		char key[8];
		size_t k;
		for (k = 0; names[i][k]; k++)
			key[k] = (char)tolower((unsigned char)names[i][k]);
		key[k] = '\0';
		kv_add(&add, key, eq + 1, len - (size_t)(eq + 1 - p));
		p += len;
		while (*p == ' ')
			p++;
	}
	if (add.len == 0)
		goto bad;
	if (s->xforward.len + add.len <= SMTP_XFWD_MAX)
		buf_add(&s->xforward, add.data, add.len);
	buf_free(&add);
	smtp_reply(s, "250 2.0.0 Ok");
	return;
bad:
	buf_free(&add);
	smtp_error(s, "501 5.5.4 Bad XFORWARD attribute");
}

static int smtp_verb(const char *line, const char *verb, const char **arg)
{
	size_t n = strlen(verb);
	if (strncasecmp(line, verb, n) != 0)
		return 0;
	if (line[n] == '\0') {
		*arg = line + n;
		return 1;
	}
	if (line[n] != ' ')
		return 0;
	*arg = line + n + 1;
	return 1;
}

static void smtp_hello(struct smtp_sess *s, int lmtp, int extended, const char *arg)
{
	if (arg[0] == '\0') {
		smtp_error(s, "501 5.5.4 Syntax: LHLO/EHLO hostname");
		return;
	}
	smtp_txn_reset(s);
	s->lmtp = lmtp;
	s->state = SMTP_S_READY;
	if (!extended) {
		buf_printf(&s->out, "250 %s\r\n", s->hostname);
		return;
	}
	buf_printf(&s->out,
	           "250-%s\r\n250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n"
	           "250-ENHANCEDSTATUSCODES\r\n250 XFORWARD NAME ADDR PORT PROTO HELO IDENT "
	           "SOURCE\r\n",
	           s->hostname, (unsigned long long)s->max_size);
}

static void smtp_mail(struct smtp_sess *s, const char *arg)
{
	char addr[ENV_ADDR_MAX + 1];
	const char *params, *why = NULL;
	uint64_t size;
	if (s->state == SMTP_S_GREETED) {
		smtp_error(s, "503 5.5.1 Send LHLO or EHLO first");
		return;
	}
	if (s->state != SMTP_S_READY) {
		smtp_error(s, "503 5.5.1 Nested MAIL command");
		return;
	}
	if (strncasecmp(arg, "FROM:", 5) != 0 ||
	    smtp_path_parse(arg + 5, 1, addr, sizeof addr, &params) < 0) {
		smtp_error(s, "501 5.1.7 Bad sender address syntax");
		return;
	}
	if (smtp_mail_params(params, &size, &why) < 0) {
		smtp_error(s, why);
		return;
	}
	if (size > s->max_size) {
		smtp_error(s, "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	if (s->ops->mail && (why = s->ops->mail(s->ctx, size)) != NULL) {
		if (strncmp(why, "421", 3) == 0)
			smtp_close_with(s, why);
		else
			smtp_reply(s, why);
		return;
	}
	envelope_free(&s->env);
	s->env.sender = xstrdup(addr);
	s->n_rcpt_ok = 0;
	s->state = SMTP_S_MAIL;
	smtp_reply(s, "250 2.1.0 Ok");
}

static void smtp_rcpt(struct smtp_sess *s, const char *arg)
{
	char addr[ENV_ADDR_MAX + 1];
	const char *params;
	if (s->state != SMTP_S_MAIL && s->state != SMTP_S_RCPT) {
		smtp_error(s, "503 5.5.1 Need MAIL before RCPT");
		return;
	}
	if (strncasecmp(arg, "TO:", 3) != 0 ||
	    smtp_path_parse(arg + 3, 0, addr, sizeof addr, &params) < 0) {
		smtp_error(s, "501 5.1.3 Bad recipient address syntax");
		return;
	}
	if (params[0] != '\0') {
		smtp_error(s, "555 5.5.4 Unsupported parameter");
		return;
	}
	if (s->n_rcpt_ok >= s->max_rcpts) {
		smtp_reply(s, "452 4.5.3 Too many recipients");
		return;
	}
	/* A duplicate is accepted (LMTP owes it a reply) but stored once. */
	if (envelope_add_rcpt(&s->env, addr) < 0) {
		smtp_error(s, "501 5.1.3 Bad recipient address syntax");
		return;
	}
	s->n_rcpt_ok++;
	s->state = SMTP_S_RCPT;
	smtp_reply(s, "250 2.1.5 Ok");
}

static void smtp_data(struct smtp_sess *s)
{
	if (s->state == SMTP_S_MAIL) {
		smtp_error(s, "554 5.5.1 No valid recipients");
		return;
	}
	if (s->state != SMTP_S_RCPT) {
		smtp_error(s, "503 5.5.1 Need RCPT before DATA");
		return;
	}
	if (s->ops->data_begin && s->ops->data_begin(s->ctx) < 0) {
		smtp_reply(s, "451 4.3.0 Cannot queue the message now; try again later");
		return;
	}
	s->state = SMTP_S_DATA;
	s->data_crlf = 1; /* the DATA command's CRLF */
	s->data_size = 0;
	s->data_fail = NULL;
	smtp_reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

/* One reply per accepted recipient for LMTP, one for SMTP. */
static void smtp_final_reply(struct smtp_sess *s, const char *line)
{
	size_t n = s->lmtp ? s->n_rcpt_ok : 1;
	for (size_t i = 0; i < n; i++)
		smtp_reply(s, line);
}

void smtp_commit_done(struct smtp_sess *s, const char *fail, const char *qid)
{
	if (s->state != SMTP_S_COMMIT)
		return;
	if (fail) {
		smtp_final_reply(s, fail);
	} else {
		char line[128];
		snprintf(line, sizeof line, "250 2.0.0 Ok: queued as %s", qid ? qid : "");
		smtp_final_reply(s, line);
	}
	s->state = SMTP_S_READY;
	smtp_txn_reset(s);
}

static void smtp_command(struct smtp_sess *s, const char *line, size_t len, int bad)
{
	const char *arg;
	if (bad || strlen(line) != len) {
		smtp_error(s, bad == 2 ? "500 5.5.2 Line too long"
		                       : "500 5.5.2 Bad line ending or NUL byte in command");
		return;
	}
	if (smtp_verb(line, "LHLO", &arg))
		smtp_hello(s, 1, 1, arg);
	else if (smtp_verb(line, "EHLO", &arg))
		smtp_hello(s, 0, 1, arg);
	else if (smtp_verb(line, "HELO", &arg))
		smtp_hello(s, 0, 0, arg);
	else if (smtp_verb(line, "MAIL", &arg))
		smtp_mail(s, arg);
	else if (smtp_verb(line, "RCPT", &arg))
		smtp_rcpt(s, arg);
	else if (smtp_verb(line, "DATA", &arg) && arg[0] == '\0')
		smtp_data(s);
	else if (smtp_verb(line, "RSET", &arg) && arg[0] == '\0') {
		smtp_txn_reset(s);
		smtp_reply(s, "250 2.0.0 Ok");
	} else if (smtp_verb(line, "NOOP", &arg))
		smtp_reply(s, "250 2.0.0 Ok");
	else if (smtp_verb(line, "QUIT", &arg) && arg[0] == '\0') {
		smtp_txn_reset(s);
		smtp_close_with(s, "221 2.0.0 Bye");
	} else if (smtp_verb(line, "XFORWARD", &arg)) {
		if (s->state != SMTP_S_READY)
			smtp_error(s, "503 5.5.1 XFORWARD only between transactions");
		else
			smtp_xforward(s, arg);
	} else
		smtp_error(s, "500 5.5.1 Command unrecognized");
}

/* One line of the message, with its CRLF (or without, when bad says what is wrong). */
static void smtp_data_line(struct smtp_sess *s, const char *line, size_t len, int bad, int crlf)
{
	/* The end is CRLF "." CRLF: a "." line after a line that ended in a bare LF is not
	 * one (a lax reader upstream saw no end there, so we must not either). */
	int at_start = s->data_crlf;
	s->data_crlf = crlf;
	if (at_start && !bad && len == 3 && memcmp(line, ".\r\n", 3) == 0) {
		if (s->data_fail) {
			if (s->ops->data_abort)
				s->ops->data_abort(s->ctx);
			s->state = SMTP_S_COMMIT; /* so that smtp_commit_done replies and resets */
			smtp_commit_done(s, s->data_fail, NULL);
			return;
		}
		s->state = SMTP_S_COMMIT;
		if (s->ops->data_end)
			s->ops->data_end(s->ctx);
		return;
	}
	if (s->data_fail) {
		/* The message already failed: read on to its end, store nothing - but not for
		 * ever: past twice SIZE the client is not sending mail. */
		s->data_size += len;
		if (s->data_size > 2 * s->max_size + SMTP_DISCARD_SLACK)
			smtp_close_with(s, "421 4.3.4 Too much data after an error; closing");
		return;
	}
	if (bad == 2) {
		s->data_fail = "500 5.5.2 Message line longer than 1000 bytes";
		return;
	}
	/* Only CRLF ends a line; a CR or LF elsewhere, or a NUL, is a second reading of the
	 * message waiting to happen. */
	if (bad || len < 2 || memchr(line, '\r', len - 2) || memchr(line, '\0', len)) {
		s->data_fail = "550 5.6.0 Bare CR, bare LF or NUL in the message";
		return;
	}
	const char *p = line;
	size_t n = len - 2;
	if (n > 0 && p[0] == '.') {
		p++;
		n--;
	}
	s->data_size += n + 1;
	if (s->data_size > s->max_size) {
		s->data_fail = "552 5.3.4 Message size exceeds fixed limit";
		return;
	}
	if (s->ops->data_write) {
		s->ops->data_write(s->ctx, p, n);
		s->ops->data_write(s->ctx, "\n", 1);
	}
}

size_t smtp_input(struct smtp_sess *s, const char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (s->state == SMTP_S_COMMIT || s->state == SMTP_S_CLOSED ||
		    s->out.len >= SMTP_OUT_HIGH)
			break;
		size_t cap = s->state == SMTP_S_DATA ? SMTP_DATA_LINE_MAX : SMTP_CMD_LINE_MAX;
		const char *nl = memchr(p + i, '\n', n - i);
		size_t take = nl ? (size_t)(nl - (p + i)) + 1 : n - i;
		/* The byte before the LF, even when the line did not fit. */
		char before = take >= 2 ? p[i + take - 2] : s->prev_byte;
		s->prev_byte = p[i + take - 1];
		size_t fit = s->llen + s->over < cap ? cap - s->llen - s->over : 0;
		if (s->over == 0 && take <= fit) {
			memcpy(s->line + s->llen, p + i, take);
			s->llen += take;
		} else {
			/* Keep the start; only the length of the rest matters. */
			size_t keep = s->over == 0 && fit > 0 ? fit : 0;
			memcpy(s->line + s->llen, p + i, keep);
			s->llen += keep;
			s->over += take - keep;
		}
		i += take;
		/* An endless command line is not a client: bounded work. */
		if (s->state != SMTP_S_DATA && s->over > SMTP_DISCARD_SLACK) {
			smtp_close_with(s, "421 4.7.0 Command line far too long; closing");
			break;
		}
		if (nl == NULL)
			break;
		int crlf = before == '\r';
		int bad = s->over ? 2 : !crlf;
		size_t len = s->llen;
		s->line[len] = '\0';
		s->llen = 0;
		s->over = 0;
		if (s->state == SMTP_S_DATA) {
			smtp_data_line(s, s->line, len, bad, crlf);
		} else {
			/* The command without its CRLF; a CR inside is a bare CR. */
			size_t cl = bad ? len : len - 2;
			s->line[cl] = '\0';
			if (!bad && memchr(s->line, '\r', cl))
				bad = 1;
			smtp_command(s, s->line, cl, bad);
		}
	}
	return i;
}
