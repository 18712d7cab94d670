/*
 * router internals shared by the router's .c files.
 *
 * strip.c   locates a MIME entity by its IMAP section path in the raw message bytes, so
 *           an infected part can be replaced while every other byte stays as received.
 * notice.c  writes notification messages as new outbox entries.
 */
#ifndef ROUTER_ROUTER_H
#define ROUTER_ROUTER_H

#include <stddef.h>

#include "conf.h"
#include "envelope.h"
#include "spool.h"
#include "util.h"

/* The byte range [*start, *end) of the entity at path ("2", "1.3") in msg[0..len): its
 * headers and body, without the line break that belongs to the next delimiter. Only
 * children of multiparts are found: 0 on success, -1 if the path does not name such an
 * entity (not multipart, no boundary, a Content-Type given twice, path out of range). */
int strip_locate(const char *msg, size_t len, const char *path, size_t *start, size_t *end);
/* The line break the message uses: "\r\n" if its first line ends so, else "\n". */
const char *strip_eol(const char *msg, size_t len);

/* Write a notice as a new entry of outbox/<conn>/: tmp/<qid>/ with message, envelope and
 * trace, fsync'd, then one rename into the outbox. 0, or -1 with errno (the caller logs:
 * a notice is best effort, never a reason to hold mail). qid_out gets the new ID. */
int notice_write(struct spool *sp, const char *conn, const struct envelope *env, const char *msg,
                 size_t len, const char *about_qid, char qid_out[SPOOL_QID_LEN + 1]);

#endif
