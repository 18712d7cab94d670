/*
 * mime_int - what the files of the MIME extractor share (splitter/mime*.c; the public
 * contract is in mime.h): the limits every file checks, the extraction context, the
 * part-file and embedded-scanner state, and the functions one file calls in another.
 * Nothing outside splitter/mime*.c includes it. Functions return as the file that
 * defines them says: 0 or -1 with c->reason filled (I/O errors), unless noted there.
 */
#ifndef SPOOLD_MIME_INT_H
#define SPOOLD_MIME_INT_H

#include "mime.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <gmime/gmime.h>
#include <nettle/sha2.h>

/* Read and decode in chunks of this size: the only per-part buffer. */
#define MIME_CHUNK 65536
/* Longest line the embedded-payload scanner keeps; the rest of a longer line is still
 * decoded inside a yEnc block and ignored elsewhere (no marker line is that long). */
#define MIME_LINE_MAX 1024
/* Bound on the manifest fields copied from headers (the manifest escapes at most 4096
 * input bytes of a value anyway). */
#define MIME_FIELD_MAX    256
#define MIME_FILENAME_MAX 4096
/* mime_leaf_enc's enc: the transfer encoding GMime chose, not another reading's. */
#define MIME_ENC_GMIME  (-1)
#define MIME_OVER(what) "over limit (" what ")"
/* At most this many header lines GMime dropped are remembered per parse (mime_junk_reading). */
#define MIME_JUNK_MAX 8

struct mime_ctx {
	int dirfd;
	const struct mime_limits *lim;
	struct manifest *m;
	GMimeParserOptions *opts;
	uint64_t content_max;  /* parts we may add besides the raw part */
	uint64_t total;        /* decoded bytes written to all parts but the raw one */
	uint64_t total_max;    /* the bound on total: max_total_size or max_expansion */
	const char *total_why; /* its unscannable reason */
	uint64_t unchecked;    /* bytes written since free space was last checked */
	int stop;              /* max_total_size reached: nothing more is written */
	unsigned tmp_seq;
	int in_alt;    /* walking an alternative view: no alternatives of alternatives */
	int in_mp_alt; /* walking a multipart's other reading: none of that reading's own */
	unsigned alts; /* alternative views made so far */
	/* offsets of header block lines GMime dropped (GMIME_CRIT_INVALID_HEADER_NAME) in
	 * the parse being collected, and, while walking the reading that makes them bodies,
	 * the stream offsets where those bodies start (only leaves starting there are
	 * written) */
	int collect;
	uint64_t junk[MIME_JUNK_MAX];
	size_t njunk;
	const uint64_t *only;
	size_t nonly;
	char *reason;
	size_t rlen;
	unsigned char *chunk; /* MIME_CHUNK bytes */
	/* The message file mem_fd whole in memory (up to lim->mem_max bytes), or NULL. Every
	 * stream made on it is a window that does not own the bytes: they stay until
	 * mime_extract returns, after every GMime object made from them is gone. */
	GMimeStream *mem;
	int mem_fd;
	/* Entity ranges for strip (docs/MANIFEST.md, entity_*): the message file, its bytes
	 * when in memory, whether the tree being walked was parsed from that file as it is
	 * (offsets are file offsets: not a decoded attachment, no inserted line end, no
	 * other reading), the boundary of the multipart whose child is being walked, and
	 * the range of the leaf about to be written. */
	int msg_fd;
	const unsigned char *msg_mem;
	uint64_t msg_size;
	int direct;
	int reparsed;
	const char *parent_bnd;
	int ent_valid;
	uint64_t ent_start, ent_end;
	char ent_sha[65];
};

/* One part file being written. */
struct mime_out {
	int fd; /* -1: not open (skipped by a limit, or closed) */
	unsigned index;
	uint64_t size;
	int full; /* a size limit was hit: the rest is dropped */
	struct sha256_ctx sha;
};

enum mime_emb_state { EMB_IDLE, EMB_UU, EMB_YENC, EMB_BINHEX };

/* The embedded-payload scanner: a line-oriented state machine fed with decoded text. */
struct mime_embed {
	enum mime_emb_state st;
	const char *path;
	char line[MIME_LINE_MAX];
	size_t len;
	int overflow; /* the current line is longer than line[] */
	int cont;     /* yEnc: the start of this line was already decoded */
	struct mime_out out;
	/* yEnc */
	int ystate;
	guint32 pcrc, crc;
	/* BinHex 4.0 */
	int bh_colon; /* 0: waiting for the ':' that starts the data */
	guint32 bh_bits;
	int bh_nbits;
	int bh_rle; /* the previous byte was the 0x90 run marker */
	int bh_have_last;
	unsigned char bh_last;
	unsigned char bh_hdr[255 + 22];
	size_t bh_hlen;
	int bh_phase;     /* 0 header, 1 data fork, 2 done */
	uint64_t bh_left; /* data fork bytes still to come */
	unsigned char bh_buf[4096];
	size_t bh_blen;
};

/* What mime_prescan found: where GMime must stop, and why. */
struct mime_scan {
	uint64_t cut;    /* parse only [0, cut) */
	const char *why; /* the unscannable reason if cut < size */
};

/* mime_out.c */
int mime_fail(struct mime_ctx *c, const char *what, const char *name);
void mime_sha_hex(struct sha256_ctx *x, char hex[65]);
void mime_out_reset(struct mime_out *o);
int mime_limit_parts(struct mime_ctx *c);
char *mime_field(const char *s, size_t max, int lower);
int mime_out_open(struct mime_ctx *c, struct mime_out *o, const char *path, enum part_found found,
                  const char *type, const char *charset, const char *cte, const char *filename);
int mime_out_write(struct mime_ctx *c, struct mime_out *o, const void *data, size_t n);
int mime_out_close(struct mime_ctx *c, struct mime_out *o);
void mime_out_abort(struct mime_out *o);

/* mime_embed.c */
void mime_embed_init(struct mime_embed *e, const char *path);
int mime_embed_feed(struct mime_ctx *c, struct mime_embed *e, const char *p, size_t n);
int mime_embed_finish(struct mime_ctx *c, struct mime_embed *e);
void mime_embed_abort(struct mime_embed *e);
int mime_embed_cut(struct mime_ctx *c, struct mime_embed *e);

/* mime_leaf.c */
/* A stream of src (reset to its start) decoded from enc (base64, quoted-printable,
 * uuencode), or src itself for the identity encodings; a new reference either way. */
GMimeStream *mime_decoder(GMimeStream *src, GMimeContentEncoding enc);
int mime_is_message_type(GMimeContentType *ct);
int mime_write_text(struct mime_ctx *c, const char *path, enum part_found found, const char *text);
int mime_leaf_enc(struct mime_ctx *c, GMimeObject *obj, const char *path, int enc,
                  const char *cte_value);
int mime_leaf(struct mime_ctx *c, GMimeObject *obj, const char *path);

/* mime_parse.c */
int mime_prescan(int fd, const unsigned char *mem, uint64_t size, uint64_t budget,
                 struct sha256_ctx *sha, struct mime_scan *scan, unsigned char *chunk);
int mime_parse_fd(struct mime_ctx *c, int fd, uint64_t start, uint64_t end, const uint64_t *ins,
                  size_t nins, GMimeMessage **msg, uint64_t *stop);
int mime_first_header(int fd, uint64_t end, unsigned char *buf, uint64_t *off);
uint64_t mime_budget(const struct mime_limits *lim);
int mime_tmpfile(struct mime_ctx *c);
void mime_warning(gint64 offset, GMimeParserWarning code, const gchar *item, gpointer data);
int mime_exposed(struct mime_ctx *c, GMimeObject *obj);
int mime_source(struct mime_ctx *c, int fd, uint64_t start, uint64_t end, const char *path,
                uint64_t depth);
int mime_encoded_message(struct mime_ctx *c, GMimePart *part, const char *path,
                         const char *leafpath, uint64_t depth, int enc_override);

/* mime_diff.c */
int mime_has_text(const char *s);
int mime_alternatives(struct mime_ctx *c, GMimePart *part, const char *path, int is_body,
                      const char *leafpath, uint64_t depth);
void mime_multipart_ambiguous(struct mime_ctx *c, GMimeObject *obj, const char *bnd);
int mime_other_names(struct mime_ctx *c, GMimeObject *obj, unsigned idx);
int mime_encoded_multipart(struct mime_ctx *c, GMimeObject *obj, const char *bnd, const char *path,
                           int is_body, uint64_t depth, int *mine);
int mime_other_delimiters(struct mime_ctx *c, const char *text, const char *bnd, const char *path,
                          int is_body, uint64_t depth, int *mine);
int mime_split_long(struct mime_ctx *c, const char *body, const char *boundary, const char *path,
                    uint64_t depth);

/* mime.c */
int mime_walk(struct mime_ctx *c, GMimeObject *obj, const char *path, int is_body, uint64_t depth);
GMimeParserOptions *mime_options(void);

#endif
