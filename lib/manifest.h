/*
 * manifest - the list of a message's parts, written by the splitter (docs/MANIFEST.md).
 *
 *   part <index> path=<mime-path> found=<how> type=<t> charset=<c> cte=<e> filename=<f>
 *        size=<decoded-bytes> sha256=<hex>
 *        [entity_start=<n> entity_end=<n> entity_sha256=<hex>]
 *   unscannable <reason>
 *   end <count>
 *
 * All values are escaped with escape_bytes, so a line never holds a space, a newline or a
 * non-ASCII byte from the message. An empty value means "none". A manifest without its
 * "end" line, or whose count differs, is incomplete and treated as absent.
 */
#ifndef SPOOLD_MANIFEST_H
#define SPOOLD_MANIFEST_H

#include <stddef.h>
#include <sys/types.h>
#include <stdint.h>

#include "util.h"

enum part_found {
	FOUND_LEAF,
	FOUND_PREAMBLE,
	FOUND_EPILOGUE,
	FOUND_UUENCODE,
	FOUND_YENC,
	FOUND_BINHEX,
	FOUND_RAW
};

struct manifest_part {
	unsigned index; /* file is %04u.ATT */
	char *path;     /* MIME path, e.g. "1.2" */
	enum part_found found;
	char *type;     /* content type, lower case */
	char *charset;  /* may be "" */
	char *cte;      /* transfer encoding, may be "" */
	char *filename; /* raw decoded bytes, may contain anything; "" if none */
	uint64_t size;
	char sha256[65];
	/* The MIME entity (headers and body) of a leaf that is a child of a multipart, as
	 * the splitter's parser (GMime) delimited it: bytes [entity_start, entity_end) of
	 * the message file, and their sha256. Only the router's strip uses it: it cuts
	 * exactly these bytes, after checking the hash. has_entity 0: not cuttable. */
	int has_entity;
	uint64_t entity_start, entity_end;
	char entity_sha256[65];
};

struct manifest {
	struct manifest_part *parts;
	size_t n_parts;
	char **unscannable; /* reasons, e.g. "over limit (max_parts)" */
	size_t n_unscannable;
};

const char *manifest_found_name(enum part_found f);
void manifest_init(struct manifest *m);
void manifest_free(struct manifest *m);
/* Append a part; strings are copied. Returns the new part. */
struct manifest_part *manifest_add(struct manifest *m, const char *path, enum part_found found,
                                   const char *type, const char *charset, const char *cte,
                                   const char *filename, size_t filename_len);
void manifest_add_unscannable(struct manifest *m, const char *reason);
void manifest_format(const struct manifest *m, struct buf *out);
/* 0, or -1 with reason (missing, incomplete, malformed). */
int manifest_read_at(int dirfd, struct manifest *m, char *reason, size_t rlen);
/* The same, for a reader that acts on it: only a manifest that belongs to owner (the
 * splitter's user) or root; another owner is "not written" (trust by ownership). */
int manifest_read_owned_at(int dirfd, struct manifest *m, uid_t owner, char *reason, size_t rlen);
/* "0007.ATT" */
void manifest_part_name(unsigned index, char out[16]);

#endif
