/*
 * mime - hostile-proof MIME extraction for the splitter (GMime 3).
 *
 * mime_extract() parses one RFC 5322 message from a regular file and writes every part
 * that a scanner must see to the work directory as NNNN.ATT, named by index only:
 *
 *   leaf      every leaf of the MIME tree, whatever its type, disposition or name, also
 *             inside attached message/rfc822 (message/news, message/global), even when
 *             that attached message is itself base64/quoted-printable encoded
 *   preamble  a multipart's preamble, when it holds more than whitespace
 *   epilogue  a multipart's epilogue, likewise
 *   embedded-uuencode, embedded-yenc, embedded-binhex
 *             payloads embedded in text parts (and in preambles and epilogues)
 *   raw       the message as received, last, when lim->scan_raw (a hard link)
 *
 * Malformed mail is taken as far as it goes, and where mail readers disagree, both ways:
 * conflicting Content-Type / Content-Transfer-Encoding headers (GMime reads the last,
 * others the first), header blocks with lines that are no header field (GMime drops
 * them, others start the body there), junk before the first header, boundaries longer
 * than GMime can match, delimiter-like lines in preambles and epilogues, transfer-encoded
 * multiparts, other names and types of a leaf (linked parts). Where a reading cannot be
 * made cheaply (conflicting boundaries, conflicting Content-Type on a multipart) the
 * message is marked "ambiguous structure (...)". docs/CONFORMANCE.md compares the result
 * with Python's email and lists each ambiguity and its decision.
 *
 * docs/MANIFEST.md describes the manifest entries. Part paths are IMAP section numbers
 * ("1", "1.2", "2.1.3"); "0" is the top level (the raw part, and the preamble and
 * epilogue of a top-level multipart).
 *
 * Hostile input never chooses a path (files are NNNN.ATT) and never an allocation that
 * the limits do not bound; every limit that is hit stops the offending data at once and
 * leaves an "unscannable over limit (<name>)" mark, so the message can never look fully
 * scanned. What GMime keeps in memory is bounded by the message size: headers, preambles
 * and epilogues (and the body of a multipart without a boundary, which GMime treats as
 * a preamble); the number of MIME objects GMime may build is bounded by a pre-scan (see
 * mime_parse.c, MIME_OBJECTS_*), past which the rest of the message is not parsed and the
 * message is marked "over limit (max_parts)". Part contents are streamed from the file
 * to the part files and are never held in memory.
 *
 * Depth: the body of the message is at depth 0; the children of a multipart at depth d,
 * and the body of a message/rfc822 at depth d, are at depth d + 1. A container whose
 * children would be deeper than max_depth is not descended into ("over limit
 * (max_depth)").
 *
 * Errors: mime_extract returns 0 (parts written; maybe with unscannable marks), 1 if the
 * input is not a message at all (empty, or no header block: the caller sends it to
 * badmail), or -1 on an I/O error (errno set, the caller retries later). In the last two
 * cases reason is filled. Part files already written are left for the caller to remove
 * (a re-split removes all parts first).
 */
#ifndef SPOOLD_MIME_H
#define SPOOLD_MIME_H

#include <stddef.h>
#include <stdint.h>

#include "envelope.h"
#include "manifest.h"

struct mime_limits {
	uint64_t max_message_size; /* bytes of the message file */
	uint64_t max_parts;        /* parts written, all kinds (the raw part included) */
	uint64_t max_depth;        /* MIME nesting depth (multipart and message/rfc822 levels) */
	uint64_t max_part_size;    /* decoded bytes per part */
	uint64_t max_total_size;   /* decoded bytes of all parts (the raw part excluded) */
	/* ...and at most max_expansion x the message size + MIME_EXPANSION_SLACK (0: no such
	 * bound): what a decoder bomb may write is a small multiple of what was received */
	uint64_t max_expansion;
	/* Free space (bytes) the filesystem of the work directory must keep while parts are
	 * written (0: not checked); below it mime_extract fails with ENOSPC and the caller
	 * defers the message. Checked at least every MIME_SPACE_STEP bytes written. */
	uint64_t min_free;
	int scan_raw; /* also add the raw message as the last part */
	/* Not a limit but a speed setting: a message of at most mem_max bytes is read into
	 * memory with one call and parsed there; a larger one (or any, with 0) is parsed
	 * from the file. Both give the same parts and manifest. */
	uint64_t mem_max;
};

#define MIME_EXPANSION_SLACK (1024 * 1024)
#define MIME_SPACE_STEP      (1024 * 1024)

/* The splitter's mem_max: most mail is smaller, and the peak memory it adds stays far
 * under the 32 MiB the splitter is held to. */
#define MIME_MEM_MAX (1024 * 1024)

/* g_mime_init, once per process. Call before any other mime_ function. */
void mime_init(void);

/* Parse the RFC 5322 message in the regular file msg_fd (read from offset 0, with pread:
 * the file offset is not used; msg_name is its name inside dirfd, used only to hard-link
 * the raw part) and write every part to dirfd as NNNN.ATT (manifest_part_name), filling m
 * (index, path, found, type, charset, cte, filename, size, sha256). Files are created
 * O_EXCL|O_NOFOLLOW|O_CLOEXEC mode 0640 and NOT fsync'd (the caller fsyncs all of them
 * at commit). When a limit is hit, the offending data is not written and
 * manifest_add_unscannable(m, "over limit (max_parts)") etc. is called. Returns 0 on
 * success (possibly with unscannable marks); 1 if the input is not a message at all
 * (reason filled) -> badmail; -1 on an I/O error (errno set; reason filled) -> retry. */
int mime_extract(int msg_fd, const char *msg_name, int dirfd, const struct mime_limits *lim,
                 struct manifest *m, char *reason, size_t rlen);

/* Envelope from the headers of a plain message (only the header block is read, at most
 * MIME_ENV_HEADER_MAX bytes): sender from Return-Path ("<>" is the null sender), else the
 * first mailbox of From, else the null sender; recipients from To and Cc (every mailbox,
 * groups flattened), addresses only, each checked with envelope_add_rcpt (invalid ones
 * are skipped; at most ENV_RCPT_MAX). env must be freshly envelope_init'ed. Returns 0, or
 * -1 with reason if there is no recipient (env is then freed) or on a read error. */
int mime_envelope_from_headers(int msg_fd, struct envelope *env, char *reason, size_t rlen);

#endif
