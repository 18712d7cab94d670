/*
 * version - the release every spoold program was built from (see version.h).
 */
#include <stdio.h>
#include <stdlib.h>

#include "version.h"

#ifndef SPOOLD_VERSION
#error "SPOOLD_VERSION is set by the Makefile from the VERSION file"
#endif

const char *version_string(void)
{
	return SPOOLD_VERSION;
}

noreturn void version_print_exit(const char *prog)
{
	printf("%s (spoold) %s\n", prog, SPOOLD_VERSION);
	exit(fflush(stdout) == 0 ? 0 : 1);
}
