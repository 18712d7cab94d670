/*
 * envelope - see envelope.h.
 */
#include "envelope.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void envelope_init(struct envelope *env)
{
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

int envelope_addr_valid(const char *addr)
{
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)addr; *p; p++, n++) {
		if (*p < 0x20 || *p == 0x7f || n >= ENV_ADDR_MAX)
			return -1;
	}
	return 0;
}

int envelope_add_rcpt(struct envelope *env, const char *rcpt)
{
	if (rcpt[0] == '\0' || envelope_addr_valid(rcpt) < 0 || env->n_rcpts >= ENV_RCPT_MAX)
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
	buf_printf(out, "S%s\n", env->sender ? env->sender : "");
	for (size_t i = 0; i < env->n_rcpts; i++)
		buf_printf(out, "R%s\n", env->rcpts[i]);
	buf_addstr(out, "E\n");
}

int envelope_parse(const char *p, size_t n, struct envelope *env, size_t *used, char *reason,
                   size_t rlen)
{
	size_t off = 0;
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
		char kind = line[0];
		const char *val = line + (len ? 1 : 0);
		if (kind == 'S' && env->sender == NULL) {
			if (envelope_addr_valid(val) < 0) {
				snprintf(reason, rlen, "envelope: invalid sender");
				free(line);
				goto fail;
			}
			env->sender = xstrdup(val);
		} else if (kind == 'R' && env->sender != NULL) {
			if (envelope_add_rcpt(env, val) < 0) {
				snprintf(reason, rlen, "envelope: invalid recipient or too many");
				free(line);
				goto fail;
			}
		} else if (kind == 'E' && len == 1 && env->sender != NULL) {
			free(line);
			if (env->n_rcpts == 0) {
				snprintf(reason, rlen, "envelope: no recipient");
				goto fail;
			}
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
	if (read_file_at(dirfd, "envelope", &b, (size_t)(ENV_ADDR_MAX + 2) * (ENV_RCPT_MAX + 2)) <
	    0)
		snprintf(reason, rlen, "envelope: %s", strerror(errno));
	else if (envelope_parse(b.data ? b.data : "", b.len, env, &used, reason, rlen) == 0)
		rc = 0;
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
