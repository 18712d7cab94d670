/*
 * fuzz_strip - libFuzzer target for the router's strip path: split, flag, cut, re-split.
 *
 * The first input byte chooses parts to flag (bit i % 8 flags part i); the rest is the
 * message. It is split with mime_extract (the splitter's code); every part whose decoded
 * bytes hold the EICAR string is flagged as well, and every part with the sha256 of a
 * flagged part (a scanner flags equal bytes alike). Then, as router_strip does: if a
 * flagged part is not a cuttable entity (no range, not a leaf) or the message was not
 * split whole, strip refuses (the router quarantines) and the input is done. Otherwise
 * strip_apply cuts the flagged ranges (it must succeed: the ranges and hashes came from
 * the same bytes, so a failure is a splitter bug), and the result is split again. It
 * aborts, so that libFuzzer keeps the input, if a part of the stripped message has the
 * sha256 of a flagged part, or holds the EICAR string.
 *
 * Build and run with `make -f tests/fuzz/fuzz.mk run-strip` (see fuzz.mk).
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

#include "manifest.h"
#include "mime.h"
#include "router.h"
#include "util.h"

#include "fuzz_common.h"

static const char fuzz_eicar[] =
    "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

static const struct mime_limits fuzz_limits = {
    .max_message_size = 1u << 20,
    .max_parts = 64,
    .max_depth = 12,
    .max_part_size = 256u << 10,
    .max_total_size = 1u << 20,
    .scan_raw = 0,
    .mem_max = MIME_MEM_MAX,
};

/* Split data into directory name under the base: 0 (m filled), 1 (not a message). */
static int fuzz_split(const char *name, const void *data, size_t size, struct manifest *m,
                      int *dirfd)
{
	char reason[256];
	int msg = memfd_create("fuzz_strip", MFD_CLOEXEC);
	if (msg < 0 || write_all(msg, data, size) < 0) {
		perror("memfd");
		abort();
	}
	if (remove_tree_at(fuzz_basefd, name) < 0 || mkdirat(fuzz_basefd, name, 0700) < 0) {
		perror("mkdir");
		abort();
	}
	*dirfd = openat(fuzz_basefd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*dirfd < 0) {
		perror("open");
		abort();
	}
	manifest_init(m);
	int rc = mime_extract(msg, "message", *dirfd, &fuzz_limits, m, reason, sizeof reason);
	close(msg);
	if (rc < 0) {
		fprintf(stderr, "mime_extract: I/O error: %s\n", reason);
		abort();
	}
	return rc;
}

static int fuzz_part_has_eicar(int dirfd, const struct manifest_part *p)
{
	char name[16];
	struct buf b;
	manifest_part_name(p->index, name);
	buf_init(&b);
	if (read_file_at(dirfd, name, &b, (size_t)fuzz_limits.max_part_size + 1) < 0) {
		perror(name);
		abort();
	}
	int yes = b.len >= sizeof fuzz_eicar - 1 &&
	          memmem(b.data, b.len, fuzz_eicar, sizeof fuzz_eicar - 1) != NULL;
	buf_free(&b);
	return yes;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (fuzz_basefd < 0)
		fuzz_setup_dir("fuzz_strip");
	unsigned sel = data[0];
	const char *msg = (const char *)data + 1;
	size_t len = size - 1;
	struct manifest m, m2;
	int dirfd = -1, dir2 = -1;
	manifest_init(&m);
	manifest_init(&m2);
	if (len == 0 || fuzz_split("a", msg, len, &m, &dirfd) != 0 || m.n_unscannable)
		goto done;
	unsigned char *flag = calloc(m.n_parts + 1, 1);
	int any_eicar = 0;
	for (size_t i = 0; i < m.n_parts; i++) {
		flag[i] = (sel >> (i % 8)) & 1;
		if (fuzz_part_has_eicar(dirfd, &m.parts[i])) {
			flag[i] = 1;
			any_eicar = 1;
		}
	}
	for (size_t i = 0; i < m.n_parts; i++)
		for (size_t k = 0; k < m.n_parts && !flag[i]; k++)
			if (flag[k] && strcmp(m.parts[i].sha256, m.parts[k].sha256) == 0)
				flag[i] = 1;
	struct strip_cut *cuts = calloc(m.n_parts + 1, sizeof *cuts);
	size_t nc = 0;
	int refuse = 0;
	for (size_t i = 0; i < m.n_parts; i++) {
		const struct manifest_part *p = &m.parts[i];
		if (!flag[i])
			continue;
		if (p->found != FOUND_LEAF || !p->has_entity) {
			refuse = 1;
			break;
		}
		cuts[nc].start = p->entity_start;
		cuts[nc].end = p->entity_end;
		cuts[nc].sha256 = p->entity_sha256;
		cuts[nc].part = p->index;
		cuts[nc].virus = "Fuzz.Flagged";
		cuts[nc].filename = p->filename;
		nc++;
	}
	struct buf out, why;
	buf_init(&out);
	buf_init(&why);
	if (!refuse && nc > 0) {
		if (strip_apply(msg, len, cuts, nc, &out, &why) < 0) {
			fprintf(stderr, "strip_apply failed on the splitter's own ranges: %s",
			        buf_cstr(&why));
			abort();
		}
		if (fuzz_split("b", out.data, out.len, &m2, &dir2) == 0) {
			for (size_t j = 0; j < m2.n_parts; j++) {
				const struct manifest_part *q = &m2.parts[j];
				for (size_t i = 0; i < m.n_parts; i++)
					if (flag[i] && m.parts[i].size > 0 &&
					    strcmp(q->sha256, m.parts[i].sha256) == 0) {
						fprintf(stderr,
						        "stripped part %zu (path %s) is back as "
						        "part %u (path %s)\n",
						        i + 1, m.parts[i].path, q->index, q->path);
						abort();
					}
				if (fuzz_part_has_eicar(dir2, q)) {
					fprintf(
					    stderr, "EICAR in part %u (path %s) after strip%s\n",
					    q->index, q->path, any_eicar ? "" : " (none before)");
					abort();
				}
			}
		}
	}
	buf_free(&out);
	buf_free(&why);
	free(cuts);
	free(flag);
done:
	manifest_free(&m);
	manifest_free(&m2);
	if (dirfd >= 0)
		close(dirfd);
	if (dir2 >= 0)
		close(dir2);
	return 0;
}
