/*
 * landlock - a stage confines its own file access to the spool (Linux Landlock).
 *
 * landlock_restrict_spool(sp, dirs, n, look, nlook) is called once a stage has finished its
 * start-up
 * (config read, spool opened, watch set). From then on the process, and anything it would
 * start, can open, create, rename and remove files only beneath the listed spool
 * directories (and make no device node there), list the look directories (only list:
 * whether a name is in use there), read files beneath /usr (what glibc and
 * GLib load late: iconv modules, locales, time zones), execute nothing, and (Landlock ABI
 * 4, Linux 6.7) make no TCP connection. A compromised parser is then held to the
 * directories the stage already works in: it cannot read /etc, a scanner's files, another
 * stage's directories, or write anywhere else. Every listed directory gets the same
 * rights, because a Landlock rename between two directories must not give the moved file
 * more rights than it had.
 *
 * Needs Landlock ABI 2 (Linux 5.19: renames between directories); the process gets
 * PR_SET_NO_NEW_PRIVS. In a build with -DSPOOLD_CRASH_POINTS, the environment variable
 * SPOOLD_TEST_LANDLOCK_PROBE=PATH makes it try to open PATH right after the restriction
 * and log the outcome (tests/t_privsep_root.py).
 *
 * DIAGNOSTICS
 *   Returns 1 when the restriction is in force, 0 when the kernel has no usable Landlock
 *   (logged once, as a warning: the stage runs unconfined). Any other failure dies
 *   temporary (75): a stage that was to be confined does not run half-confined.
 */
#ifndef SPOOLD_LANDLOCK_H
#define SPOOLD_LANDLOCK_H

#include <stddef.h>

#include "spool.h"

int landlock_restrict_spool(const struct spool *sp, const enum spool_dir *dirs, size_t n,
                            const enum spool_dir *look, size_t nlook);

#endif
