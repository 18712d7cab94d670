/*
 * util - the shared helpers in one include, for the files that use several of them; each
 * lives in a module of its own, with its contract in its header:
 *
 *   alloc.h    allocation that succeeds or ends the process (xmalloc, xasprintf, ...)
 *   strconv.h  bounded conversions: bsnprintf, parse_u64
 *   buf.h      struct buf, the growable byte buffer
 *   escape.h   escaping for spool lines, log values, reports and JSON; key=value tokens
 *   fileio.h   descriptors, whole files, copies, fsync, tree removal
 *   clock.h    monotonic and wall clocks; the alarm that interrupts a blocking call
 *
 * Here too, as they belong to no one module: the exit codes every program shares (the
 * sysexits.h values, named in the man pages' EXIT STATUS) and ARRAY_LEN.
 */
#ifndef SPOOLD_UTIL_H
#define SPOOLD_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "alloc.h"
#include "buf.h"
#include "clock.h"
#include "escape.h"
#include "fileio.h"
#include "strconv.h"

#define EXIT_USAGE    64 /* EX_USAGE */
#define EXIT_DATAERR  65 /* EX_DATAERR */
#define EXIT_TEMPFAIL 75 /* EX_TEMPFAIL: supervisor restarts */
#define EXIT_NOPERM   77 /* EX_NOPERM: not allowed for this user */
#define EXIT_CONFIG   78 /* EX_CONFIG */

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
