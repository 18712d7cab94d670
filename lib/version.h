/*
 * version - the release every spoold program was built from.
 *
 * version_string() is the VERSION file's release, plus "+g<commit>" (and "-dirty") when
 * built from a git checkout, so that two builds of one release can be told apart after
 * an upgrade. version_print_exit(prog) prints "<prog> (spoold) <version>" on stdout and
 * exits 0: every program's --version.
 */
#ifndef SPOOLD_VERSION_H
#define SPOOLD_VERSION_H

#include <stdnoreturn.h>

const char *version_string(void);
noreturn void version_print_exit(const char *prog);

#endif
