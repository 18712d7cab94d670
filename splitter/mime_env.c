/*
 * mime_env - the envelope of a plain message from its headers
 * (mime_envelope_from_headers; the contract is in mime.h).
 * The contract of the extractor is in mime.h; what the files share, in mime_int.h.
 */
#include "mime_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gmime/gmime.h>
#include <nettle/sha2.h>

#include "log.h"
#include "util.h"

/* Header block read for mime_envelope_from_headers. */
#define MIME_ENV_HEADER_MAX (1024 * 1024)

/* ---- envelope from headers ------------------------------------------------------- */

static void mime_env_collect(InternetAddressList *l, struct envelope *env, int depth)
{
	int n = l ? internet_address_list_length(l) : 0;
	for (int i = 0; i < n && env->n_rcpts < ENV_RCPT_MAX; i++) {
		InternetAddress *a = internet_address_list_get_address(l, i);
		if (INTERNET_ADDRESS_IS_GROUP(a)) {
			/* groups do not nest in RFC 5322; one level is all we follow */
			if (depth == 0)
				mime_env_collect(
				    internet_address_group_get_members(INTERNET_ADDRESS_GROUP(a)),
				    env, depth + 1);
			continue;
		}
		const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a));
		if (addr && addr[0])
			(void)envelope_add_rcpt(env, addr); /* invalid ones are skipped */
	}
}

static const char *mime_env_first(InternetAddressList *l, int depth)
{
	int n = l ? internet_address_list_length(l) : 0;
	for (int i = 0; i < n; i++) {
		InternetAddress *a = internet_address_list_get_address(l, i);
		if (INTERNET_ADDRESS_IS_GROUP(a)) {
			const char *s = depth == 0
			                    ? mime_env_first(internet_address_group_get_members(
			                                         INTERNET_ADDRESS_GROUP(a)),
			                                     1)
			                    : NULL;
			if (s)
				return s;
			continue;
		}
		const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a));
		if (addr && addr[0])
			return addr;
	}
	return NULL;
}

int mime_envelope_from_headers(int msg_fd, struct envelope *env, char *reason, size_t rlen)
{
	mime_init();
	struct buf b;
	buf_init(&b);
	int rc = -1;
	GMimeMessage *msg = NULL;
	GMimeParserOptions *opts = mime_options();
	/* Only the header block: read until the empty line, at most MIME_ENV_HEADER_MAX. */
	char tmp[8192];
	off_t off = 0;
	while (b.len < MIME_ENV_HEADER_MAX) {
		ssize_t r = pread(msg_fd, tmp, sizeof tmp, off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(reason, rlen, "read message: %s", strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		size_t from = b.len > 3 ? b.len - 3 : 0;
		buf_add(&b, tmp, (size_t)r);
		off += r;
		if (memmem(b.data + from, b.len - from, "\n\n", 2) ||
		    memmem(b.data + from, b.len - from, "\n\r\n", 3))
			break;
	}
	buf_add(&b, "\n\n", 2);
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(b.data, b.len);
	GMimeParser *parser = g_mime_parser_new_with_stream(st);
	g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
	msg = g_mime_parser_construct_message(parser, opts);
	g_object_unref(parser);
	g_object_unref(st);
	if (msg == NULL) {
		snprintf(reason, rlen, "no header block");
		goto out;
	}
	const char *sender = NULL;
	InternetAddressList *rp = NULL;
	const char *rpv = g_mime_object_get_header(GMIME_OBJECT(msg), "Return-Path");
	if (rpv) {
		rp = internet_address_list_parse(opts, rpv);
		sender = mime_env_first(rp, 0);
		if (sender == NULL)
			sender = ""; /* "<>": the null sender */
	} else {
		sender = mime_env_first(g_mime_message_get_from(msg), 0);
	}
	if (sender == NULL || envelope_addr_valid(sender) < 0)
		sender = "";
	env->sender = xstrdup(sender);
	if (rp)
		g_object_unref(rp);
	mime_env_collect(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_TO), env, 0);
	mime_env_collect(g_mime_message_get_addresses(msg, GMIME_ADDRESS_TYPE_CC), env, 0);
	if (env->n_rcpts == 0) {
		snprintf(reason, rlen, "no recipient in To or Cc");
		envelope_free(env);
		goto out;
	}
	rc = 0;
out:
	if (msg)
		g_object_unref(msg);
	g_mime_parser_options_free(opts);
	buf_free(&b);
	return rc;
}
