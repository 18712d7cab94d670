// links: scanner-runner/cache.c -llmdb
/*
 * test_cache - unit test of the verdict cache (scanner-runner/cache.c, LMDB): what is
 * stored and what never is, the key (part, scanner and VERSION line each change it),
 * which VERSION lines may be cached at all, eviction that keeps a full map usable, a
 * corrupt file started afresh, and entries surviving a reopen.
 *
 * Prints one line per check, "PASS name" or "FAIL name: why", and exits 1 if any failed.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache.h"
#include "check.h"

static void sha_of(unsigned n, unsigned char out[32])
{
	memset(out, 0, 32);
	memcpy(out, &n, sizeof n);
}

int main(void)
{
	char dir[] = "/tmp/spoold-test-cache-XXXXXX";
	char path[256], lock[300];
	struct cache c;
	unsigned char sha[32], k1[CACHE_KEY_LEN], k2[CACHE_KEY_LEN], k3[CACHE_KEY_LEN];
	enum verdict v;
	char virus[256];
	const char *ver = "ClamAV 1.4.6/27471/Mon Nov 30 00:00:00 2026";
	if (mkdtemp(dir) == NULL)
		return 2;
	snprintf(path, sizeof path, "%s/cache.s.mdb", dir);
	snprintf(lock, sizeof lock, "%s-lock", path);

	CHECK("version_official", cache_version_usable(ver));
	CHECK("version_local_only", !cache_version_usable("ClamAV 1.4.6"));
	CHECK("version_junk", !cache_version_usable("PONG") && !cache_version_usable("ClamAV x/y"));

	sha_of(1, sha);
	cache_key(k1, sha, "s", ver);
	cache_key(k2, sha, "s", "ClamAV 1.4.6/27472/Tue Dec  1 00:00:00 2026");
	cache_key(k3, sha, "t", ver);
	CHECK("key_has_version", memcmp(k1, k2, CACHE_KEY_LEN) != 0);
	CHECK("key_has_scanner", memcmp(k1, k3, CACHE_KEY_LEN) != 0);

	/* Every descriptor LMDB opens is close-on-exec (scanner children inherit nothing). */
	int open_before[256];
	for (int fd = 0; fd < 256; fd++)
		open_before[fd] = fcntl(fd, F_GETFD) >= 0;
	CHECK("open", cache_open(&c, dir, "s", 1u << 20) == 0 && c.env != NULL);
	int leaks = 0;
	for (int fd = 0; fd < 256; fd++) {
		int fl = fcntl(fd, F_GETFD);
		if (!open_before[fd] && fl >= 0 && !(fl & FD_CLOEXEC))
			leaks++;
	}
	CHECK("lmdb_fds_cloexec", leaks == 0);
	CHECK("miss_empty", cache_get(&c, k1, &v, virus, sizeof virus) == 0);
	CHECK("generation_starts_at_0", cache_generation(&c) == 0);
	cache_generation_bump(&c);
	cache_generation_bump(&c);
	CHECK("generation_bumps", cache_generation(&c) == 2);
	cache_put(&c, k1, V_CLEAN, "");
	cache_put(&c, k3, V_INFECTED, "Eicar-Test-Signature");
	cache_put(&c, k2, V_ERROR, "");
	CHECK("not_before_commit", cache_get(&c, k1, &v, virus, sizeof virus) == 0);
	cache_commit(&c);
	CHECK("hit_clean", cache_get(&c, k1, &v, virus, sizeof virus) == 1 && v == V_CLEAN);
	CHECK("hit_infected", cache_get(&c, k3, &v, virus, sizeof virus) == 1 && v == V_INFECTED &&
	                          strcmp(virus, "Eicar-Test-Signature") == 0);
	CHECK("error_never_stored", cache_get(&c, k2, &v, virus, sizeof virus) == 0);
	unsigned char k4[CACHE_KEY_LEN];
	sha_of(4, sha);
	cache_key(k4, sha, "s", ver);
	cache_put(&c, k4, V_UNSCANNABLE, "");
	cache_put(&c, k4, V_INFECTED, ""); /* infected without a name: not kept either */
	cache_commit(&c);
	CHECK("unscannable_never_stored", cache_get(&c, k4, &v, virus, sizeof virus) == 0);
	cache_close(&c);

	/* Entries survive a reopen (a runner restart). */
	CHECK("reopen", cache_open(&c, dir, "s", 1u << 20) == 0);
	CHECK("survives_reopen", cache_get(&c, k1, &v, virus, sizeof virus) == 1 && v == V_CLEAN);
	CHECK("generation_survives_reopen", cache_generation(&c) == 2);

	/* Far more entries than a 1 MB map holds: eviction keeps the cache working. */
	unsigned char last[CACHE_KEY_LEN];
	for (unsigned i = 0; i < 40000; i++) {
		sha_of(1000 + i, sha);
		cache_key(last, sha, "s", ver);
		cache_put(&c, last, V_INFECTED, "Some.Rather.Long.Signature.Name.To.Fill.Pages");
		if (i % 500 == 499)
			cache_commit(&c);
	}
	cache_commit(&c);
	CHECK("full_map_still_on", c.env != NULL);
	CHECK("newest_entry_kept", cache_get(&c, last, &v, virus, sizeof virus) == 1);
	CHECK("generation_never_evicted", cache_generation(&c) == 2);
	cache_close(&c);

	/* A corrupt file: started afresh, never an error for the caller. */
	int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	char junk[8192];
	memset(junk, 0xff, sizeof junk);
	if (fd < 0 || write(fd, junk, sizeof junk) != (ssize_t)sizeof junk)
		return 2;
	close(fd);
	CHECK("corrupt_reopened", cache_open(&c, dir, "s", 1u << 20) == 0 && c.env != NULL);
	CHECK("corrupt_is_empty", cache_get(&c, k1, &v, virus, sizeof virus) == 0);
	cache_close(&c);

	/* Others may write it (a stage of another user made it first, or made it writable):
	 * never used, scanned without it. */
	CHECK("group_writable_refused",
	      chmod(path, 0660) == 0 && cache_open(&c, dir, "s", 1u << 20) < 0 && c.env == NULL);
	chmod(path, 0640);
	if (geteuid() == 0) {
		CHECK("other_owner_refused", chown(path, 65534, 65534) == 0 &&
		                                 cache_open(&c, dir, "s", 1u << 20) < 0 &&
		                                 c.env == NULL);
		CHECK("own_again_used", chown(path, 0, 0) == 0 &&
		                            cache_open(&c, dir, "s", 1u << 20) == 0 &&
		                            c.env != NULL);
		cache_close(&c);
	}

	unlink(path);
	unlink(lock);
	rmdir(dir);
	return failures ? 1 : 0;
}
