/*
 * envelope - see envelope.h.
 */
#include "envelope.h"
#include "entry_names.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void envelope_init(struct envelope *env)
{
	env->smtputf8 = 0;
	env->sender = NULL;
	env->rcpts = NULL;
	env->n_rcpts = 0;
}

void envelope_free(struct envelope *env)
{
	free(env->sender);
	for (size_t i = 0; i < env->n_rcpts; i++)
		free(env->rcpts[i]);
	free(env->rcpts);
	envelope_init(env);
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong form, no
 * surrogate, nothing above U+10FFFF) that is not a C1 control, else 0. */
static size_t envelope_utf8_len(const unsigned char *p)
{
	unsigned cp;
	size_t n;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		n = 2;
		cp = p[0] & 0x1fu;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		n = 3;
		cp = p[0] & 0x0fu;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		n = 4;
		cp = p[0] & 0x07u;
	} else {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
			return 0;
		cp = (cp << 6) | (p[i] & 0x3fu);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff) || cp <= 0x9f)
		return 0;
	return n;
}

int envelope_addr_check(const char *addr, int utf8, const char **why)
{
	const unsigned char *p = (const unsigned char *)addr;
	size_t n = strlen(addr);
	if (n >= ENV_ADDR_MAX) {
		*why = "longer than 997 bytes";
		return -1;
	}
	while (*p) {
		if (*p >= 0x80) {
			size_t l = utf8 ? envelope_utf8_len(p) : 0;
			if (l == 0) {
				*why = utf8 ? "not well-formed UTF-8"
				            : "non-ASCII byte in an envelope that is not SMTPUTF8";
				return -1;
			}
			p += l;
			continue;
		}
		/* These would end the "<path>" a connector writes, or start an ESMTP
		 * parameter, a comment or a second address in the SMTP dialogue. */
		if (*p <= 0x20 || *p == 0x7f) {
			*why = "space or control byte";
			return -1;
		}
		if (strchr("<>(),;\"\\", *p) != NULL) {
			*why = "one of < > ( ) , ; \" \\";
			return -1;
		}
		p++;
	}
	return 0;
}

int envelope_addr_valid(const char *addr)
{
	const char *why;
	return envelope_addr_check(addr, 0, &why);
}

int envelope_addr_8bit(const char *addr)
{
	for (const unsigned char *p = (const unsigned char *)addr; *p; p++)
		if (*p >= 0x80)
			return 1;
	return 0;
}

int envelope_check(const struct envelope *env, char *reason, size_t rlen)
{
	const char *why;
	if (env->sender == NULL) {
		snprintf(reason, rlen, "envelope: no sender");
		return -1;
	}
	if (envelope_addr_check(env->sender, env->smtputf8, &why) < 0) {
		snprintf(reason, rlen, "envelope: invalid sender (%s)", why);
		return -1;
	}
	if (env->n_rcpts == 0) {
		snprintf(reason, rlen, "envelope: no recipient");
		return -1;
	}
	for (size_t i = 0; i < env->n_rcpts; i++) {
		if (env->rcpts[i][0] == '\0' ||
		    envelope_addr_check(env->rcpts[i], env->smtputf8, &why) < 0) {
			snprintf(reason, rlen, "envelope: invalid recipient %zu (%s)", i + 1,
			         env->rcpts[i][0] ? why : "empty");
			return -1;
		}
	}
	return 0;
}

int envelope_add_rcpt(struct envelope *env, const char *rcpt)
{
	const char *why;
	if (rcpt[0] == '\0' || envelope_addr_check(rcpt, env->smtputf8, &why) < 0 ||
	    env->n_rcpts >= ENV_RCPT_MAX)
		return -1;
	/* The same recipient twice would be delivered twice. */
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (strcasecmp(env->rcpts[i], rcpt) == 0)
			return 0;
	env->rcpts = xrealloc(env->rcpts, (env->n_rcpts + 1) * sizeof(char *));
	env->rcpts[env->n_rcpts++] = xstrdup(rcpt);
	return 0;
}

void envelope_format(const struct envelope *env, struct buf *out)
{
	if (env->smtputf8)
		buf_addstr(out, "U\n");
	buf_printf(out, "S%s\n", env->sender ? env->sender : "");
	for (size_t i = 0; i < env->n_rcpts; i++)
		buf_printf(out, "R%s\n", env->rcpts[i]);
	buf_addstr(out, "E\n");
}

int envelope_parse(const char *p, size_t n, struct envelope *env, size_t *used, char *reason,
                   size_t rlen)
{
	size_t off = 0;
	const char *why;
	envelope_init(env);
	while (off < n) {
		const char *nl = memchr(p + off, '\n', n - off);
		if (nl == NULL)
			break;
		size_t len = (size_t)(nl - (p + off));
		char *line = xstrndup(p + off, len);
		off += len + 1;
		if (strlen(line) != len) {
			snprintf(reason, rlen, "envelope: NUL byte in a record");
			free(line);
			goto fail;
		}
		/* A queue file written with CRLF line ends is read as if it had LF: the CR
		 * before the LF is dropped. Any other CR is a control byte and rejected by the
		 * address check, never turned into a line end. */
		if (len > 0 && line[len - 1] == '\r')
			line[--len] = '\0';
		char kind = line[0];
		const char *val = line + (len ? 1 : 0);
		if (kind == 'U' && len == 1 && env->sender == NULL && !env->smtputf8) {
			env->smtputf8 = 1;
		} else if (kind == 'S' && env->sender == NULL) {
			if (envelope_addr_check(val, env->smtputf8, &why) < 0) {
				snprintf(reason, rlen, "envelope: invalid sender (%s)", why);
				free(line);
				goto fail;
			}
			env->sender = xstrdup(val);
		} else if (kind == 'R' && env->sender != NULL) {
			if (val[0] == '\0' || envelope_addr_check(val, env->smtputf8, &why) < 0) {
				snprintf(reason, rlen, "envelope: invalid recipient (%s)",
				         val[0] ? why : "empty");
				free(line);
				goto fail;
			}
			if (envelope_add_rcpt(env, val) < 0) {
				snprintf(reason, rlen, "envelope: more than %d recipients",
				         ENV_RCPT_MAX);
				free(line);
				goto fail;
			}
		} else if (kind == 'E' && len == 1 && env->sender != NULL) {
			free(line);
			if (envelope_check(env, reason, rlen) < 0)
				goto fail;
			*used = off;
			return 0;
		} else {
			snprintf(reason, rlen, "envelope: unexpected record");
			free(line);
			goto fail;
		}
		free(line);
	}
	snprintf(reason, rlen, "envelope: incomplete (no E record)");
fail:
	envelope_free(env);
	return -1;
}

int envelope_read_at(int dirfd, struct envelope *env, char *reason, size_t rlen)
{
	struct buf b;
	buf_init(&b);
	size_t used;
	int rc = -1;
	envelope_init(env);
	if (read_file_at(dirfd, ENTRY_ENVELOPE, &b,
	                 (size_t)(ENV_ADDR_MAX + 2) * (ENV_RCPT_MAX + 2)) < 0)
		snprintf(reason, rlen, "envelope: %s", strerror(errno));
	else if (envelope_parse(b.data ? b.data : "", b.len, env, &used, reason, rlen) == 0) {
		/* Files in a work directory are written whole (tmp + rename): bytes after the
		 * E record mean the file is not one we wrote, so it counts as absent. */
		if (used == b.len) {
			rc = 0;
		} else {
			snprintf(reason, rlen, "envelope: incomplete (data after the E record)");
			envelope_free(env);
		}
	}
	buf_free(&b);
	return rc;
}

void envelope_addr_domain(const char *addr, char *out, size_t outlen)
{
	const char *at = strrchr(addr, '@');
	const char *d = at ? at + 1 : "";
	size_t i = 0;
	for (; d[i] && d[i] != '>' && i + 1 < outlen; i++)
		out[i] = (char)tolower((unsigned char)d[i]);
	out[i] = '\0';
}
