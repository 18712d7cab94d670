/*
 * fuzz_mime - libFuzzer target for mime_extract (and mime_envelope_from_headers).
 *
 * Each input is written to a memfd (msg_fd) and, for the raw-part hard link, as
 * "message" into a fresh directory under $TMPDIR; mime_extract splits it there with
 * modest limits; then every part file is checked against the manifest (it exists and
 * has the manifest's size), the input is split once more with mem_max 0 (from the file,
 * not from memory), which must give the same manifest, and the directories are removed.
 * A failed check aborts, so that libFuzzer keeps the input.
 *
 * Build and run with `make fuzz` (tests/fuzz/fuzz.mk), or by hand from the repository root
 * (the seed directories are only read, new inputs go to the first, writable one):
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Ilib -Isplitter \
 *     $(pkg-config --cflags gmime-3.0 nettle) tests/fuzz/fuzz_mime.c splitter/mime*.c \
 *     lib/alloc.c lib/buf.c lib/clock.c lib/escape.c \
 *     lib/fileio.c lib/strconv.c lib/log.c lib/manifest.c lib/envelope.c \
 *     $(pkg-config --libs gmime-3.0 nettle) -o fuzz_mime
 *   mkdir -p /tmp/fuzz_corpus && ./fuzz_mime /tmp/fuzz_corpus ../shared/corpus/msgs \
 *     ../shared/corpus/extras -max_total_time=300 -timeout=10 -rss_limit_mb=2048 \
 *     -max_len=131072
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "envelope.h"
#include "manifest.h"
#include "mime.h"
#include "util.h"

#include "fuzz_common.h"

static const struct mime_limits fuzz_limits = {
    .max_message_size = 1u << 20,
    .max_parts = 64,
    .max_depth = 12,
    .max_part_size = 256u << 10,
    .max_total_size = 1u << 20,
    .scan_raw = 1,
    .mem_max = MIME_MEM_MAX,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (fuzz_basefd < 0)
		fuzz_setup_dir("fuzz_mime");
	int msg = memfd_create("fuzz_mime", MFD_CLOEXEC);
	if (msg < 0 || write_all(msg, data, size) < 0) {
		perror("memfd");
		abort();
	}
	if (mkdirat(fuzz_basefd, "w", 0700) < 0 && errno != EEXIST) {
		perror("mkdir");
		abort();
	}
	int dirfd = openat(fuzz_basefd, "w", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int mfd = dirfd < 0
	              ? -1
	              : openat(dirfd, "message", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (mfd < 0 || write_all(mfd, data, size) < 0 || close(mfd) < 0) {
		perror("message");
		abort();
	}
	struct manifest m;
	manifest_init(&m);
	char reason[256];
	int rc = mime_extract(msg, "message", dirfd, &fuzz_limits, &m, reason, sizeof reason);
	if (rc < 0) {
		fprintf(stderr, "mime_extract: I/O error: %s\n", reason);
		abort();
	}
	if (rc == 0) {
		if (m.n_parts > fuzz_limits.max_parts)
			abort();
		for (size_t i = 0; i < m.n_parts; i++) {
			char name[16];
			struct stat st;
			manifest_part_name(m.parts[i].index, name);
			if (m.parts[i].index != i + 1 ||
			    fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
			    !S_ISREG(st.st_mode) || (uint64_t)st.st_size != m.parts[i].size ||
			    m.parts[i].size > fuzz_limits.max_part_size +
			                          (m.parts[i].found == FOUND_RAW ? size : 0))
				abort();
		}
	}
	/* The same input parsed from the file instead of memory gives the same result. */
	struct buf a, b;
	buf_init(&a);
	buf_init(&b);
	manifest_format(&m, &a);
	struct mime_limits flim = fuzz_limits;
	flim.mem_max = 0;
	struct manifest m2;
	manifest_init(&m2);
	if (mkdirat(fuzz_basefd, "f", 0700) < 0 && errno != EEXIST) {
		perror("mkdir");
		abort();
	}
	int fdir = openat(fuzz_basefd, "f", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int ffd =
	    fdir < 0 ? -1 : openat(fdir, "message", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (ffd < 0 || write_all(ffd, data, size) < 0 || close(ffd) < 0) {
		perror("message");
		abort();
	}
	int rc2 = mime_extract(msg, "message", fdir, &flim, &m2, reason, sizeof reason);
	manifest_format(&m2, &b);
	if (rc2 != rc || a.len != b.len || (a.len && memcmp(a.data, b.data, a.len) != 0)) {
		fprintf(stderr, "from memory (rc %d):\n%.*s\nfrom the file (rc %d):\n%.*s\n", rc,
		        (int)a.len, a.data ? a.data : "", rc2, (int)b.len, b.data ? b.data : "");
		abort();
	}
	buf_free(&a);
	buf_free(&b);
	manifest_free(&m2);
	close(fdir);
	if (remove_tree_at(fuzz_basefd, "f") < 0) {
		perror("remove");
		abort();
	}
	manifest_free(&m);
	struct envelope env;
	envelope_init(&env);
	if (mime_envelope_from_headers(msg, &env, reason, sizeof reason) == 0)
		envelope_free(&env);
	close(msg);
	close(dirfd);
	if (remove_tree_at(fuzz_basefd, "w") < 0) {
		perror("remove");
		abort();
	}
	return 0;
}
