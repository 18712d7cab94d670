/*
 * crash - deterministic crash points for the crash tests (docs/INTERNALS.md).
 *
 * In a build with -DSPOOLD_CRASH_POINTS, CRASH_POINT("split-precommit") calls _exit(99)
 * when the environment variable SPOOLD_CRASH_AT names that point. Production builds
 * compile the macro to nothing.
 */
#ifndef SPOOLD_CRASH_H
#define SPOOLD_CRASH_H

#ifdef SPOOLD_CRASH_POINTS
void crash_point(const char *name);
#define CRASH_POINT(name) crash_point(name)
#else
#define CRASH_POINT(name) ((void)0)
#endif

#endif
