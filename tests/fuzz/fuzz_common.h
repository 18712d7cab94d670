/*
 * fuzz_common - what the MIME fuzz targets share: a private scratch directory (made once,
 * on the first input) and GMime's start-up. Each target includes it once.
 */
#ifndef SPOOLD_FUZZ_COMMON_H
#define SPOOLD_FUZZ_COMMON_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>

#include "mime.h"

static char fuzz_base[256];
static int fuzz_basefd = -1;

/* $TMPDIR/<name>.XXXXXX as fuzz_base and fuzz_basefd; aborts when it cannot. */
static void fuzz_setup_dir(const char *name)
{
	const char *t = getenv("TMPDIR");
	snprintf(fuzz_base, sizeof fuzz_base, "%s/%s.XXXXXX", t ? t : "/tmp", name);
	if (mkdtemp(fuzz_base) == NULL) {
		perror("mkdtemp");
		abort();
	}
	fuzz_basefd = open(fuzz_base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fuzz_basefd < 0) {
		perror(fuzz_base);
		abort();
	}
	mime_init();
}

#endif
