/*
 * mime_leaf - decoding one leaf: its transfer encoding streamed into its part file,
 * its decoded text fed to the embedded-payload scanner.
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

/* ---- decoding one leaf ------------------------------------------------------------- */

GMimeStream *mime_decoder(GMimeStream *src, GMimeContentEncoding enc)
{
	g_mime_stream_reset(src);
	if (enc != GMIME_CONTENT_ENCODING_BASE64 && enc != GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE &&
	    enc != GMIME_CONTENT_ENCODING_UUENCODE) {
		g_object_ref(src);
		return src;
	}
	GMimeFilter *f = g_mime_filter_basic_new(enc, FALSE);
	GMimeStream *in = g_mime_stream_filter_new(src);
	g_mime_stream_filter_add(GMIME_STREAM_FILTER(in), f);
	g_object_unref(f);
	return in;
}

/* Copy the stream src through the transfer decoding enc into o (and into the embedded
 * scanner if emb). src is read from its start. */
static int mime_decode_stream(struct mime_ctx *c, GMimeStream *src, GMimeContentEncoding enc,
                              struct mime_out *o, struct mime_embed *emb)
{
	GMimeStream *in = mime_decoder(src, enc);
	int rc = 0;
	/* A filter stream hands out at most 4 KiB of its source per read: gather the decoded
	 * bytes in the chunk and write them in one call when it is nearly full or at the end,
	 * not a write(2) for every 3 KiB of base64. */
	size_t fill = 0;
	for (;;) {
		int end = 0;
		ssize_t r = g_mime_stream_read(in, (char *)c->chunk + fill, MIME_CHUNK - fill);
		if (r > 0) {
			fill += (size_t)r;
		} else if (g_mime_stream_eos(in)) {
			end = 1;
		} else if (r < 0) {
			int e = errno ? errno : EIO;
			snprintf(c->reason, c->rlen, "read message: %s", strerror(e));
			errno = e;
			rc = -1;
			break;
		}
		if (fill > 0 && (end || MIME_CHUNK - fill < MIME_CHUNK / 8)) {
			if (mime_out_write(c, o, c->chunk, fill) < 0 ||
			    (emb && mime_embed_feed(c, emb, (const char *)c->chunk, fill) < 0)) {
				rc = -1;
				break;
			}
			fill = 0;
			/* the rest is over a limit: stop reading, not just writing */
			if (o->full || c->stop)
				break;
		}
		if (end)
			break;
	}
	g_object_unref(in);
	return rc;
}

static int mime_is_text(const char *type)
{
	return strncmp(type, "text/", 5) == 0;
}

int mime_is_message_type(GMimeContentType *ct)
{
	static const char *subs[] = {"rfc822", "rfc2822", "news", "global"};
	if (ct == NULL || g_ascii_strcasecmp(g_mime_content_type_get_media_type(ct), "message"))
		return 0;
	const char *sub = g_mime_content_type_get_media_subtype(ct);
	for (size_t i = 0; i < ARRAY_LEN(subs); i++)
		if (sub && g_ascii_strcasecmp(sub, subs[i]) == 0)
			return 1;
	return 0;
}

/* Write the bytes p[0..n) as a part of its own (preambles and epilogues). */
int mime_write_text(struct mime_ctx *c, const char *path, enum part_found found, const char *text)
{
	struct mime_out o;
	struct mime_embed emb;
	size_t n = strlen(text);
	int r = mime_out_open(c, &o, path, found, "text/plain", "", "", "");
	if (r != 0)
		return r < 0 ? -1 : 0;
	mime_embed_init(&emb, path);
	if (mime_out_write(c, &o, text, n) < 0 ||
	    (!o.full && !c->stop &&
	     (mime_embed_feed(c, &emb, text, n) < 0 || mime_embed_finish(c, &emb) < 0))) {
		mime_embed_abort(&emb);
		mime_out_abort(&o);
		return -1;
	}
	if (mime_embed_cut(c, &emb) < 0) { /* only open if cut short by a limit */
		mime_out_abort(&o);
		return -1;
	}
	return mime_out_close(c, &o);
}

/* A leaf: decoded with the transfer encoding GMime chose, or with enc (and the header
 * value cte_value) when enc is not MIME_ENC_GMIME. */
int mime_leaf_enc(struct mime_ctx *c, GMimeObject *obj, const char *path, int enc,
                  const char *cte_value)
{
	GMimeContentType *ct = g_mime_object_get_content_type(obj);
	char *mt = ct ? g_mime_content_type_get_mime_type(ct) : NULL;
	char *type = mime_field(mt ? mt : "text/plain", MIME_FIELD_MAX, 1);
	g_free(mt);
	char *charset =
	    mime_field(g_mime_object_get_content_type_parameter(obj, "charset"), MIME_FIELD_MAX, 1);
	char *cte = mime_field(enc == MIME_ENC_GMIME
	                           ? g_mime_object_get_header(obj, "Content-Transfer-Encoding")
	                           : cte_value,
	                       MIME_FIELD_MAX, 1);
	g_strstrip(cte);
	const char *filename =
	    GMIME_IS_PART(obj) ? g_mime_part_get_filename(GMIME_PART(obj)) : NULL;
	struct mime_out o;
	struct mime_embed emb;
	/* The entity range belongs to this leaf only, not to an embedded payload found in
	 * it or to another reading of it: taken once, here. */
	int ent = c->ent_valid;
	c->ent_valid = 0;
	int rc = mime_out_open(c, &o, path, FOUND_LEAF, type, charset, cte, filename);
	if (rc == 0 && ent) {
		struct manifest_part *mp = &c->m->parts[o.index - 1];
		mp->has_entity = 1;
		mp->entity_start = c->ent_start;
		mp->entity_end = c->ent_end;
		memcpy(mp->entity_sha256, c->ent_sha, sizeof mp->entity_sha256);
	}
	if (rc != 0) {
		rc = rc < 0 ? -1 : 0;
		goto out;
	}
	mime_embed_init(&emb, path);
	GMimeDataWrapper *w = GMIME_IS_PART(obj) ? g_mime_part_get_content(GMIME_PART(obj)) : NULL;
	GMimeStream *s = w ? g_mime_data_wrapper_get_stream(w) : NULL;
	GMimeContentEncoding e = enc == MIME_ENC_GMIME
	                             ? (w ? g_mime_data_wrapper_get_encoding(w) : 0)
	                             : (GMimeContentEncoding)enc;
	if (s && mime_decode_stream(c, s, e, &o, mime_is_text(type) ? &emb : NULL) < 0) {
		rc = -1;
	} else if (!o.full && !c->stop && mime_embed_finish(c, &emb) < 0) {
		rc = -1;
	}
	if (rc < 0)
		mime_embed_abort(&emb);
	else if (mime_embed_cut(c, &emb) < 0)
		rc = -1;
	if (rc < 0)
		mime_out_abort(&o);
	else
		rc = mime_out_close(c, &o);
out:
	free(type);
	free(charset);
	free(cte);
	return rc;
}

int mime_leaf(struct mime_ctx *c, GMimeObject *obj, const char *path)
{
	return mime_leaf_enc(c, obj, path, MIME_ENC_GMIME, NULL);
}
