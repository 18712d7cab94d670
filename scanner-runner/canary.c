/*
 * canary - the scanner self-test: our answer to scanner output drift.
 *
 * Each scanner is checked at start, every canary_interval seconds, and when its version
 * string changes:
 *   - the EICAR test file must come back infected, with a virus name;
 *   - a clean file must come back clean;
 *   - a missing file must come back as an error (exec scanners only, see below);
 *   - a password-protected zip (ZipCrypto, EICAR inside, a fresh password each run) must
 *     not come back clean: infected (Heuristics.Encrypted.Zip), unscannable or an error;
 *   - a zip nested CANARY_NEST_DEPTH (20) levels deep, EICAR innermost, deeper than
 *     ClamAV's MaxRecursion (17 by default), must not come back clean: infected (the
 *     EICAR, or Heuristics.Limits.Exceeded.* from clamscan), unscannable (the same from
 *     clamd) or an error.
 * The two archive checks catch a scanner that passes what it did not look into:
 * clamscan without --alert-encrypted=yes --alert-exceeds-max=yes, clamd without
 * AlertEncrypted / AlertExceedsMax, answer OK for both. A scanner that does get in
 * (knows the password, or allows deeper recursion) finds the EICAR and passes too.
 * A scanner that fails is degraded: it still runs (its verdicts stay on record), but
 * every part it scans also gets an error line "scanner degraded: <reason>", so its mail
 * is held (or covered by a backup scanner, as for any failed primary). A degraded
 * scanner is checked again every min(canary_interval, 30) seconds, so that it recovers
 * without waiting for a whole interval.
 *
 * Signature-database changes: for an exec scanner the runner cannot know where the
 * database is (it is somewhere in an argv template), so it watches the scanner's version
 * string instead (version_argv, e.g. "ClamAV 1.4.6/27471/..." carries the daily
 * database version) every VERSION_CHECK_MS (5 s: one short version_argv run, or one
 * VERSION request), and re-runs the canary when it changes. A
 * database change that leaves the version line alone (a --database= directory of one's
 * own, as in the tests) is caught only by the periodic check. For clamd the version is
 * clamd's VERSION reply, which carries the loaded database version.
 *
 * clamd has no missing-file check: the runner never gives clamd a path (FILDES passes a
 * descriptor, zINSTREAM the bytes), so "a file that does not exist" cannot be asked of
 * clamd; an unreadable descriptor would fail in our own client before clamd sees it, and
 * so would test clamd.c, not clamd.
 *
 * Health goes to run/scanners (atomically rewritten; read by spoolctl status):
 *   scanner name=<n> state=ok|degraded since=<unix> reason=<escaped>
 *   end
 * Every runner process writes the file after each check; with several runners, the last
 * check wins, which is the freshest knowledge. State changes are logged once each
 * (log_error when degraded), not once per message.
 *
 * The EICAR string is assembled at run time from two halves, so that no scanner flags
 * this program's binary or source. The archives are built at run time too, a few
 * KB at most (stored + ZipCrypto, and deflate with fixed Huffman codes, written
 * here: no zlib), with a per-run nonce in the innermost file name and the password, so
 * that no two runs send the same bytes and no scanner's result cache (clamd caches
 * clean results by hash) can answer for a check.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "canary.h"
#include "clamd.h"
#include "farm.h"
#include "log.h"
#include "scanner.h"
#include "spool.h"
#include "util.h"

#define VERSION_CHECK_MS    5000
#define DEGRADED_RECHECK_MS 30000

static const char canary_eicar_a[] = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-";
static const char canary_eicar_b[] = "ANTIVIRUS-TEST-FILE!$H+H*";
static const char canary_clean_text[] = "spoold canary: a plain, clean text file.\n";

#define CANARY_EICAR     "canary-eicar.com"
#define CANARY_CLEAN     "canary-clean.txt"
#define CANARY_MISSING   "canary-missing.txt"
#define CANARY_ENCRYPTED "canary-encrypted.zip"
#define CANARY_NESTED    "canary-nested.zip"

/* Zip levels of CANARY_NESTED: above ClamAV's default MaxRecursion (17), so that a
 * scanner with default limits must say it stopped, and small (under 6 KB in all). */
#define CANARY_NEST_DEPTH 20

/* What a check wants back. CW_REFUSED: infected (with a name), unscannable (clamd's
 * Heuristics.Limits.Exceeded) or an error: anything but clean. */
enum canary_want { CW_INFECTED, CW_CLEAN, CW_ERROR, CW_REFUSED };

static int64_t canary_next_full_ms;
static int64_t canary_next_version_ms;

struct canary_dir {
	char name[64];
	char path[4096];
	int fd;
};

static int canary_file_write(int dirfd, const char *name, const void *p, size_t n)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
	if (fd < 0)
		return -1;
	if (write_all(fd, p, n) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return close(fd);
}

static void canary_eicar(struct buf *b)
{
	buf_addstr(b, canary_eicar_a);
	buf_addstr(b, canary_eicar_b);
}

/* splitmix64: spreads a nonce over bytes. Not a secret: the nonce only has to differ
 * between runs (cache busting); a scanner that guessed the password would find EICAR. */
static uint64_t canary_mix(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* One CRC-32 (zip's polynomial) step without the pre- and post-inversion: what
 * ZipCrypto's key schedule uses. */
static uint32_t canary_crc_byte(uint32_t c, unsigned char b)
{
	c ^= b;
	for (int k = 0; k < 8; k++)
		c = (c >> 1) ^ (0xedb88320U & (0U - (c & 1)));
	return c;
}

static uint32_t canary_crc32(const struct buf *b)
{
	uint32_t c = 0xffffffffU;
	for (size_t i = 0; i < b->len; i++)
		c = canary_crc_byte(c, (unsigned char)b->data[i]);
	return ~c;
}

static void canary_put16(struct buf *b, unsigned v)
{
	unsigned char x[2] = {v & 0xff, (v >> 8) & 0xff};
	buf_add(b, x, 2);
}

static void canary_put32(struct buf *b, uint32_t v)
{
	unsigned char x[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >> 24) & 0xff};
	buf_add(b, x, 4);
}

struct canary_bits {
	struct buf *out;
	uint32_t acc;
	int n;
};

static void canary_bits_put(struct canary_bits *bw, uint32_t v, int n)
{
	bw->acc |= v << bw->n;
	bw->n += n;
	while (bw->n >= 8) {
		unsigned char c = bw->acc & 0xff;
		buf_add(bw->out, &c, 1);
		bw->acc >>= 8;
		bw->n -= 8;
	}
}

/* Raw deflate (RFC 1951), one final block of fixed Huffman codes, literals only: no
 * compression, but no byte of the input shows through either, so EICAR inside is found
 * only by a scanner that inflates every level. Huffman codes go out most significant bit
 * first, hence the bit reversal. */
static void canary_deflate(struct buf *out, const struct buf *in)
{
	struct canary_bits bw = {out, 0, 0};
	canary_bits_put(&bw, 1, 1); /* BFINAL */
	canary_bits_put(&bw, 1, 2); /* BTYPE 01: fixed Huffman codes */
	for (size_t i = 0; i < in->len; i++) {
		unsigned lit = (unsigned char)in->data[i];
		uint32_t code = lit < 144 ? 0x30 + lit : 0x190 + lit - 144;
		int len = lit < 144 ? 8 : 9;
		uint32_t rev = 0;
		for (int k = 0; k < len; k++)
			rev |= ((code >> k) & 1) << (len - 1 - k);
		canary_bits_put(&bw, rev, len);
	}
	canary_bits_put(&bw, 0, 7); /* end of block: code 256 is seven 0 bits */
	if (bw.n > 0)
		canary_bits_put(&bw, 0, 8 - bw.n);
}

/* ZipCrypto (APPNOTE 6.1): encrypt the 12-byte header and then data with password. */
static void canary_zipcrypto(struct buf *out, const char *password, const unsigned char *head,
                             const struct buf *data)
{
	uint32_t k0 = 0x12345678U, k1 = 0x23456789U, k2 = 0x34567890U;
	size_t plen = strlen(password);
	for (size_t i = 0; i < plen + 12 + data->len; i++) {
		unsigned char p = i < plen        ? (unsigned char)password[i]
		                  : i < plen + 12 ? head[i - plen]
		                                  : (unsigned char)data->data[i - plen - 12];
		if (i >= plen) {
			unsigned t = (k2 | 2) & 0xffff;
			unsigned char c = p ^ (((t * (t ^ 1)) >> 8) & 0xff);
			buf_add(out, &c, 1);
		}
		k0 = canary_crc_byte(k0, p);
		k1 = (k1 + (k0 & 0xff)) * 134775813U + 1;
		k2 = canary_crc_byte(k2, k1 >> 24);
	}
}

/* The fields that a local file header and its central directory entry share, from
 * "version needed" to the extra field's length (always 0 here). */
static void canary_zip_fields(struct buf *zip, unsigned flags, unsigned method, uint32_t crc,
                              size_t csize, size_t usize, size_t nlen)
{
	canary_put16(zip, 20); /* version needed: 2.0 */
	canary_put16(zip, flags);
	canary_put16(zip, method);
	canary_put16(zip, 0);    /* time */
	canary_put16(zip, 0x21); /* date: 1980-01-01 */
	canary_put32(zip, crc);
	canary_put32(zip, (uint32_t)csize);
	canary_put32(zip, (uint32_t)usize);
	canary_put16(zip, (unsigned)nlen);
	canary_put16(zip, 0); /* extra */
}

/* A zip holding one file name whose bytes are content, stored as payload (content
 * compressed and/or encrypted as method and flags say). Dates are 1980-01-01. */
static void canary_zip(struct buf *zip, const char *name, const struct buf *content,
                       unsigned method, unsigned flags, const struct buf *payload)
{
	uint32_t crc = canary_crc32(content);
	size_t nlen = strlen(name);
	canary_put32(zip, 0x04034b50U); /* local file header */
	canary_zip_fields(zip, flags, method, crc, payload->len, content->len, nlen);
	buf_add(zip, name, nlen);
	buf_add(zip, payload->data, payload->len);
	size_t cd = zip->len;
	canary_put32(zip, 0x02014b50U); /* central directory entry */
	canary_put16(zip, 20);          /* made by: version 2.0 */
	canary_zip_fields(zip, flags, method, crc, payload->len, content->len, nlen);
	canary_put16(zip, 0); /* comment */
	canary_put16(zip, 0); /* disk */
	canary_put16(zip, 0); /* internal attributes */
	canary_put32(zip, 0100644U << 16);
	canary_put32(zip, 0); /* local header offset */
	buf_add(zip, name, nlen);
	size_t cdlen = zip->len - cd;
	canary_put32(zip, 0x06054b50U); /* end of central directory */
	canary_put16(zip, 0);
	canary_put16(zip, 0);
	canary_put16(zip, 1);
	canary_put16(zip, 1);
	canary_put32(zip, (uint32_t)cdlen);
	canary_put32(zip, (uint32_t)cd);
	canary_put16(zip, 0);
}

/* The encrypted canary: EICAR, stored, ZipCrypto with a password made from the nonce. */
static void canary_zip_encrypted(struct buf *zip, uint64_t *nonce)
{
	struct buf eicar, payload;
	buf_init(&eicar);
	buf_init(&payload);
	canary_eicar(&eicar);
	char password[32];
	bsnprintf(password, sizeof password, "%016llx", (unsigned long long)canary_mix(nonce));
	unsigned char head[12];
	for (int i = 0; i < 11; i++)
		head[i] = (unsigned char)canary_mix(nonce);
	head[11] = (unsigned char)(canary_crc32(&eicar) >> 24); /* the password check byte */
	canary_zipcrypto(&payload, password, head, &eicar);
	canary_zip(zip, "eicar.com", &eicar, 0, 1, &payload);
	buf_free(&payload);
	buf_free(&eicar);
}

/* The over-limit canary: EICAR under a nonce name, zipped CANARY_NEST_DEPTH times. */
static void canary_zip_nested(struct buf *zip, uint64_t *nonce)
{
	struct buf in, deflated;
	buf_init(&in);
	buf_init(&deflated);
	canary_eicar(&in);
	char name[64];
	bsnprintf(name, sizeof name, "eicar-%016llx.com", (unsigned long long)canary_mix(nonce));
	for (int level = CANARY_NEST_DEPTH; level >= 1; level--) {
		buf_reset(&deflated);
		canary_deflate(&deflated, &in);
		buf_reset(zip);
		canary_zip(zip, name, &in, 8, 0, &deflated);
		bsnprintf(name, sizeof name, "level-%02d.zip", level);
		buf_reset(&in);
		buf_add(&in, zip->data, zip->len);
	}
	buf_free(&deflated);
	buf_free(&in);
}

/* A scratch directory tmp/canary.<pid> with the canary files. Scratch only:
 * nothing is fsync'd, a crash leaves debris that the next runner with this pid clears. */
static int canary_dir_make(struct stage *st, struct canary_dir *cd)
{
	int tmpfd = st->spool.fd[SD_TMP];
	snprintf(cd->name, sizeof cd->name, "canary.%ld", (long)getpid());
	snprintf(cd->path, sizeof cd->path, "%s/tmp/%s", st->spool.root, cd->name);
	cd->fd = -1;
	if (remove_tree_at(tmpfd, cd->name) < 0 && errno != ENOENT)
		log_warn(NULL, "cannot remove %s: %s", cd->path, strerror(errno));
	if (mkdirat(tmpfd, cd->name, 0750) < 0 && errno != EEXIST) {
		log_warn(NULL, "cannot create %s: %s", cd->path, strerror(errno));
		return -1;
	}
	cd->fd = openat(tmpfd, cd->name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (cd->fd < 0) {
		log_warn(NULL, "cannot open %s: %s", cd->path, strerror(errno));
		return -1;
	}
	/* A fresh nonce per run: no two runs write the same archive bytes (see the top). */
	static uint64_t runs;
	uint64_t nonce = (uint64_t)now_us_wall() ^ ((uint64_t)getpid() << 40) ^ ++runs;
	struct buf eicar, enc, nest;
	buf_init(&eicar);
	buf_init(&enc);
	buf_init(&nest);
	canary_eicar(&eicar);
	canary_zip_encrypted(&enc, &nonce);
	canary_zip_nested(&nest, &nonce);
	int rc = 0;
	if (canary_file_write(cd->fd, CANARY_EICAR, eicar.data, eicar.len) < 0 ||
	    canary_file_write(cd->fd, CANARY_CLEAN, canary_clean_text, strlen(canary_clean_text)) <
	        0 ||
	    canary_file_write(cd->fd, CANARY_ENCRYPTED, enc.data, enc.len) < 0 ||
	    canary_file_write(cd->fd, CANARY_NESTED, nest.data, nest.len) < 0) {
		log_warn(NULL, "cannot write the canary files in %s: %s", cd->path,
		         strerror(errno));
		rc = -1;
	}
	buf_free(&nest);
	buf_free(&enc);
	buf_free(&eicar);
	return rc;
}

static const char *canary_want_name(enum canary_want want)
{
	switch (want) {
	case CW_INFECTED:
		return "infected";
	case CW_CLEAN:
		return "clean";
	case CW_ERROR:
		return "error";
	case CW_REFUSED:
		return "not clean";
	}
	log_panic("canary_want_name: unknown want %d", (int)want);
}

static void canary_dir_remove(struct stage *st, struct canary_dir *cd)
{
	if (cd->fd >= 0)
		close(cd->fd);
	cd->fd = -1;
	if (remove_tree_at(st->spool.fd[SD_TMP], cd->name) < 0 && errno != ENOENT)
		log_warn(NULL, "cannot remove %s: %s", cd->path, strerror(errno));
}

/* One check of one file through the scanner's backend (addr: the one clamd address, NULL
 * for exec). 0 if the scanner answered as wanted, else -1 with reason. */
static int canary_check_file(struct stage *st, struct scanner *s, struct canary_dir *cd,
                             const char *addr, const char *file, enum canary_want want,
                             char *reason, size_t rlen)
{
	struct scanner_probe pr;
	memset(&pr, 0, sizeof pr);
	s->ops->check(s, st, cd->path, cd->fd, file, addr, &pr);
	if (pr.unasked[0]) {
		bsnprintf(reason, rlen, "%s: %s", file, pr.unasked);
		return -1;
	}
	/* A detection we cannot name is drift too. A timeout is never a pass: a missing file
	 * must be refused, and a scanner that hangs on a 3 KB archive is broken. */
	int infected = pr.verdict == V_INFECTED && pr.virus[0];
	int error = pr.verdict == V_ERROR && !pr.timed_out;
	int ok = want == CW_INFECTED ? infected
	         : want == CW_CLEAN  ? pr.verdict == V_CLEAN
	         : want == CW_ERROR  ? error
	                             : infected || error || pr.verdict == V_UNSCANNABLE;
	/* Truncation (bsnprintf) only shortens the reason shown in run/scanners. */
	if (!ok)
		bsnprintf(reason, rlen, "%s: want %s, got %s%s (%s)", file, canary_want_name(want),
		          verdict_name(pr.verdict),
		          pr.verdict == V_INFECTED && !pr.virus[0] ? " with no virus name" : "",
		          pr.detail);
	return ok ? 0 : -1;
}

/* The checks, in order. The archive checks come last: a scanner that cannot even find
 * EICAR is reported as that, not as an archive problem. */
static const struct {
	const char *file;
	enum canary_want want;
	int missing; /* asks about a missing file: only of a backend that checks_missing */
} canary_checks[] = {
    {CANARY_EICAR, CW_INFECTED, 0}, {CANARY_CLEAN, CW_CLEAN, 0},
    {CANARY_MISSING, CW_ERROR, 1},  {CANARY_ENCRYPTED, CW_REFUSED, 0},
    {CANARY_NESTED, CW_REFUSED, 0},
};

/* Run the checks in order and stop at the first failure: a scanner that hangs on EICAR
 * costs one timeout, not five. addr: the one clamd address to check (NULL for exec). */
static int canary_check_one(struct stage *st, struct scanner *s, struct canary_dir *cd,
                            const char *addr, char *reason, size_t rlen)
{
	for (size_t i = 0; i < sizeof canary_checks / sizeof canary_checks[0]; i++) {
		if (canary_checks[i].missing && !s->ops->checks_missing)
			continue;
		if (canary_check_file(st, s, cd, addr, canary_checks[i].file, canary_checks[i].want,
		                      reason, rlen) < 0)
			return -1;
	}
	return 0;
}

/*
 * A clamd scanner is a pool: every address passes its own canary (one bad engine in a
 * pool must not pass mail). An address that does not answer PING is marked down (the
 * pool probes it later); one that answers but fails is kept out of the pool until a
 * later canary passes. The scanner is degraded only when no address passes, and its
 * reason then names every address and why.
 */
static int canary_check(struct stage *st, struct scanner *rs, struct canary_dir *cd, char *reason,
                        size_t rlen)
{
	const struct conf_scanner *sc = rs->conf;
	if (sc->type != SCANNER_CLAMD)
		return canary_check_one(st, rs, cd, NULL, reason, rlen);
	struct pool *p = farm_pool(st, sc);
	struct clamd_policy pol;
	struct buf all;
	char first[512] = "";
	size_t passed = 0, checked = 0;
	clamd_policy_init(&pol, sc);
	buf_init(&all);
	for (size_t i = 0; sc->clamd_addrs && sc->clamd_addrs[i] && !stage_stopping(); i++) {
		const char *addr = sc->clamd_addrs[i];
		char why[512], version[128];
		/* A tcp address after a unix one is never used (clamd.h): nothing to check. */
		if (strncmp(addr, "tcp:", 4) == 0) {
			int after_unix = 0;
			for (size_t j = 0; j < i; j++)
				after_unix |= strncmp(sc->clamd_addrs[j], "unix:", 5) == 0;
			if (after_unix)
				continue;
		}
		int alive = clamd_ping(addr, &pol, 2000) == 0;
		/* Dead or not, the checks say why in clamd.c's words ("connect: ...",
		 * "untrusted peer ..."); a dead one costs one failed connect. */
		if (canary_check_one(st, rs, cd, addr, why, sizeof why) == 0) {
			if (clamd_version(addr, &pol, 2000, version, sizeof version) < 0)
				version[0] = '\0';
			farm_canary_mark(st, sc, i, 1, version[0] ? version : NULL, NULL);
			passed++;
			continue;
		}
		checked++;
		if (!alive) {
			/* Not an engine that answers wrongly: down, and probed again later. */
			pool_fail(p, i, why);
		} else {
			farm_canary_mark(st, sc, i, 0, NULL, why);
			log_error(NULL,
			          "scanner %s: clamd %s failed its canary and takes no mail: %s",
			          sc->name, addr, why);
		}
		if (checked == 1)
			bsnprintf(first, sizeof first, "%s", why);
		buf_printf(&all, "%s%s: %s", all.len ? "; " : "", addr, why);
	}
	if (passed > 0) {
		buf_free(&all);
		return 0;
	}
	/* One usable address: its own reason, as for any scanner. Several: each of them. */
	if (checked == 1)
		bsnprintf(reason, rlen, "%s", first);
	else
		bsnprintf(reason, rlen, "no clamd address passed: %s",
		          all.len ? buf_cstr(&all) : "no usable address");
	buf_free(&all);
	return -1;
}

static void canary_set(struct stage *st, struct scanner *rs, int ok, const char *reason)
{
	int64_t now = now_us_wall() / 1000000;
	const char *name = rs->conf->name;
	if (!ok) {
		if (!rs->degraded || !rs->checked) {
			rs->since = now;
			/* Loud, and once per state change: every message it scans is held now. */
			log_error(
			    NULL,
			    "scanner %s failed its canary and is degraded; its mail is held: %s",
			    name, reason);
		}
		rs->degraded = 1;
		snprintf(rs->reason, sizeof rs->reason, "%s", reason);
	} else {
		if (rs->degraded || !rs->checked) {
			rs->since = now;
			if (rs->degraded) {
				log_info(NULL,
				         "scanner %s passed its canary again; no longer degraded",
				         name);
				/* The router retries the mail this scanner's errors held at once,
				 * not after its back-off. */
				char runpath[4200];
				bsnprintf(runpath, sizeof runpath, "%s/run", st->spool.root);
				pool_recovered_note(st->spool.fd[SD_RUN], runpath, name);
			} else
				log_info(NULL, "scanner %s passed its canary (version %s)", name,
				         rs->version);
		}
		rs->degraded = 0;
		rs->reason[0] = '\0';
	}
	rs->checked = 1;
}

static void canary_health_write(struct stage *st, struct scanner *sc, size_t n)
{
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < n; i++) {
		buf_addstr(&b, "scanner");
		kv_addstr(&b, "name", sc[i].conf->name);
		kv_addstr(&b, "state",
		          !sc[i].conf->canary ? "unchecked"
		          : sc[i].degraded    ? "degraded"
		                              : "ok");
		buf_printf(&b, " since=%lld", (long long)sc[i].since);
		kv_addstr(&b, "reason", sc[i].reason);
		buf_addstr(&b, "\n");
	}
	buf_addstr(&b, "end\n");
	/* tmp + rename: a reader sees the old file or the new one, never half of one. No
	 * directory fsync: this is a status display, rebuilt by the next check after a crash. */
	if (write_file_atomic(st->spool.fd[SD_RUN], "scanners", b.data, b.len, 0640) < 0)
		log_warn(NULL, "cannot write %s/run/scanners: %s", st->spool.root, strerror(errno));
	buf_free(&b);
}

/* Check the scanners whose want[] is set (all when want is NULL). */
static void canary_run(struct stage *st, struct scanner *sc, size_t n, const int *want)
{
	struct canary_dir cd;
	int made = canary_dir_make(st, &cd);
	for (size_t i = 0; i < n && !stage_stopping(); i++) {
		/* canary = false in the config: the administrator chose a scanner that cannot
		 * pass (a no-op in a benchmark); it is shown as "unchecked", never degraded. */
		if ((want && !want[i]) || !sc[i].conf->canary)
			continue;
		char reason[512];
		int ok;
		if (made < 0) {
			snprintf(reason, sizeof reason, "cannot write the canary files in %.300s",
			         cd.path);
			ok = 0;
		} else {
			ok = canary_check(st, &sc[i], &cd, reason, sizeof reason) == 0;
		}
		canary_set(st, &sc[i], ok, reason);
		int64_t again = (int64_t)st->conf->canary_interval * 1000;
		if (again <= 0 || again > DEGRADED_RECHECK_MS)
			again = DEGRADED_RECHECK_MS;
		sc[i].next_recheck_ms = now_ms_monotonic() + again;
	}
	canary_dir_remove(st, &cd);
	canary_health_write(st, sc, n);
}

void canary_start(struct stage *st, struct scanner *sc, size_t n)
{
	canary_run(st, sc, n, NULL);
	int64_t now = now_ms_monotonic();
	canary_next_full_ms = now + (int64_t)st->conf->canary_interval * 1000;
	canary_next_version_ms = now + VERSION_CHECK_MS;
}

void canary_tick(struct stage *st, struct scanner *sc, size_t n)
{
	int64_t now = now_ms_monotonic();
	int64_t interval = (int64_t)st->conf->canary_interval * 1000;
	if (interval > 0 && now >= canary_next_full_ms) {
		canary_run(st, sc, n, NULL);
		canary_next_full_ms = now_ms_monotonic() + interval;
		return;
	}
	int *want = xcalloc(n ? n : 1, sizeof *want);
	int any = 0;
	if (now >= canary_next_version_ms) {
		for (size_t i = 0; i < n; i++) {
			char v[sizeof sc[i].version];
			sc[i].ops->version(&sc[i], v, sizeof v);
			/* A pool: any address may have reloaded, not only the first. */
			if (sc[i].conf->type == SCANNER_CLAMD && sc[i].conf->canary &&
			    strcmp(v, sc[i].version) == 0 && farm_versions_changed(st, sc[i].conf))
				want[i] = any = 1;
			if (strcmp(v, sc[i].version) != 0) {
				log_info(NULL,
				         "scanner %s version changed from \"%s\" to \"%s\"; "
				         "running its canary",
				         sc[i].conf->name, sc[i].version, v);
				memcpy(sc[i].version, v, sizeof v);
				want[i] = any = 1;
			}
		}
		canary_next_version_ms = now_ms_monotonic() + VERSION_CHECK_MS;
	}
	/* Degraded scanners are looked at more often, but only when periodic checks are on:
	 * canary_interval = 0 means "at start and on version changes only". */
	for (size_t i = 0; i < n && interval > 0; i++)
		if (sc[i].degraded && now >= sc[i].next_recheck_ms)
			want[i] = any = 1;
	/* A pool address that failed its canary, or came back with another version, is
	 * checked on the same schedule as a degraded scanner: it takes no mail until then. */
	for (size_t i = 0; i < n; i++)
		if (sc[i].conf->type == SCANNER_CLAMD && sc[i].conf->canary &&
		    now >= sc[i].next_recheck_ms && farm_canary_wanted(st, sc[i].conf))
			want[i] = any = 1;
	if (any)
		canary_run(st, sc, n, want);
	free(want);
}
