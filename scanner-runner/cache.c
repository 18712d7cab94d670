/*
 * cache - the LMDB verdict cache of a clamd scanner (see cache.h).
 *
 * LMDB gives one file shared by every runner with readers that never block writers, and
 * it survives restarts. Commits keep LMDB's default sync: a cache damaged by a power cut
 * could otherwise hand back another part's verdict; with the key repeated in each value
 * a damaged page can at worst miss.
 */
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache.h"
#include "log.h"
#include "util.h"

/* value: key (32 bytes), verdict (1 byte: 'c' or 'i'), virus name (no NUL). */
#define CACHE_VAL_MAX (CACHE_KEY_LEN + 1 + 255)

/* LMDB 0.9 opens its lock and sync descriptors without O_CLOEXEC, and scanner children
 * must inherit nothing of ours: mark close-on-exec whatever descriptor below
 * CACHE_FD_SCAN was not open (or was already close-on-exec) before mdb_env_open. */
#define CACHE_FD_SCAN 1024

static void cache_fds_mark(unsigned char *was, int after)
{
	for (int fd = 0; fd < CACHE_FD_SCAN; fd++) {
		int fl = fcntl(fd, F_GETFD);
		if (!after)
			was[fd] = fl >= 0 && !(fl & FD_CLOEXEC);
		else if (fl >= 0 && !(fl & FD_CLOEXEC) && !was[fd] &&
		         fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
			log_warn(NULL, "cannot set close-on-exec on descriptor %d: %s", fd,
			         strerror(errno));
	}
}

static int cache_env_open(struct cache *c, uint64_t size)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	static unsigned char was[CACHE_FD_SCAN];
	cache_fds_mark(was, 0);
	int rc = mdb_env_create(&env);
	if (rc != 0)
		return rc;
	if ((rc = mdb_env_set_mapsize(env, (size_t)size)) != 0 ||
	    /* MDB_NOSUBDIR: one file and its -lock beside it, in run/. MDB_NOTLS: the runner
	     * has one thread; no thread-local reader slots. */
	    (rc = mdb_env_open(env, c->path, MDB_NOSUBDIR | MDB_NOTLS, 0640)) != 0 ||
	    (rc = mdb_txn_begin(env, NULL, 0, &txn)) != 0) {
		mdb_env_close(env);
		return rc;
	}
	if ((rc = mdb_dbi_open(txn, NULL, 0, &dbi)) != 0) {
		mdb_txn_abort(txn);
		mdb_env_close(env);
		return rc;
	}
	/* mdb_txn_commit frees the transaction whatever it returns. */
	if ((rc = mdb_txn_commit(txn)) != 0) {
		mdb_env_close(env);
		return rc;
	}
	/* The reader table descriptor opens at the first transaction: done above. */
	cache_fds_mark(was, 1);
	/* Trust by ownership: a verdict cache another user could write (in a separated spool,
	 * a stage that made the file before us in run/, whose sticky bit keeps it there) would
	 * let it call any part clean. Only files of our own, writable by no one else. */
	int dfd = -1;
	struct stat st, lst;
	char lock[4200];
	bsnprintf(lock, sizeof lock, "%s-lock", c->path);
	if (mdb_env_get_fd(env, &dfd) != 0 || fstat(dfd, &st) < 0 || st.st_uid != geteuid() ||
	    (st.st_mode & 022) || lstat(lock, &lst) < 0 || !S_ISREG(lst.st_mode) ||
	    lst.st_uid != geteuid() || (lst.st_mode & 022)) {
		log_error(NULL,
		          "verdict cache %s (or its -lock) is not this user's own, or others may "
		          "write it: not used; remove it by hand",
		          c->path);
		mdb_env_close(env);
		return EACCES;
	}
	c->env = env;
	c->dbi = dbi;
	return 0;
}

static void cache_remove_files(struct cache *c)
{
	char lock[4200];
	bsnprintf(lock, sizeof lock, "%s-lock", c->path);
	if (unlink(c->path) < 0 && errno != ENOENT)
		log_warn(NULL, "cannot remove %s: %s", c->path, strerror(errno));
	if (unlink(lock) < 0 && errno != ENOENT)
		log_warn(NULL, "cannot remove %s: %s", lock, strerror(errno));
}

int cache_open(struct cache *c, const char *runpath, const char *scanner, uint64_t size)
{
	memset(c, 0, sizeof *c);
	if (bsnprintf(c->path, sizeof c->path, "%s/cache.%s.mdb", runpath, scanner) < 0) {
		log_warn(NULL, "verdict cache path too long under %s; cache off", runpath);
		return -1;
	}
	int rc = cache_env_open(c, size);
	if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
	    rc == MDB_PANIC) {
		/* Only a cache: start an empty one rather than run without. */
		log_warn(NULL, "verdict cache %s is unusable (%s); starting it afresh", c->path,
		         mdb_strerror(rc));
		cache_remove_files(c);
		rc = cache_env_open(c, size);
	}
	if (rc != 0) {
		log_warn(NULL, "cannot open the verdict cache %s: %s; parts are scanned without it",
		         c->path, mdb_strerror(rc));
		c->env = NULL;
		return -1;
	}
	return 0;
}

void cache_close(struct cache *c)
{
	if (c->env)
		mdb_env_close(c->env);
	c->env = NULL;
	free(c->pending);
	c->pending = NULL;
	c->npending = c->cap = 0;
}

/* Turn the cache off after a failure: scanning goes on without it. */
static void cache_off(struct cache *c, const char *what, int rc)
{
	log_warn(NULL, "verdict cache %s: %s: %s; turned off until the runner restarts", c->path,
	         what, mdb_strerror(rc));
	mdb_env_close(c->env);
	c->env = NULL;
}

int cache_version_usable(const char *version)
{
	/* "ClamAV 1.4.6/27471/date": the database version is the digits after the first
	 * '/'. Without them we cannot tell one database from the next. */
	const char *s = strchr(version, '/');
	return strncmp(version, "ClamAV ", 7) == 0 && s != NULL && s[1] >= '0' && s[1] <= '9';
}

int cache_sha256_fd(int fd, unsigned char out[32])
{
	struct sha256_ctx h;
	unsigned char b[65536];
	off_t off = 0;
	sha256_init(&h);
	for (;;) {
		ssize_t n = pread(fd, b, sizeof b, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		sha256_update(&h, (size_t)n, b);
		off += n;
	}
	sha256_digest(&h, SHA256_DIGEST_SIZE, out);
	return 0;
}

void cache_key(unsigned char key[CACHE_KEY_LEN], const unsigned char part_sha[32],
               const char *scanner, const char *version)
{
	struct sha256_ctx h;
	sha256_init(&h);
	sha256_update(&h, 32, part_sha);
	/* The NULs keep "a"+"bc" and "ab"+"c" apart. */
	sha256_update(&h, strlen(scanner) + 1, (const uint8_t *)scanner);
	sha256_update(&h, strlen(version) + 1, (const uint8_t *)version);
	sha256_digest(&h, CACHE_KEY_LEN, key);
}

int cache_get(struct cache *c, const unsigned char key[CACHE_KEY_LEN], enum verdict *v, char *virus,
              size_t vlen)
{
	MDB_txn *txn;
	MDB_val k = {CACHE_KEY_LEN, (void *)key}, d;
	if (c->env == NULL)
		return 0;
	int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
	if (rc != 0) {
		cache_off(c, "read", rc);
		return 0;
	}
	rc = mdb_get(txn, c->dbi, &k, &d);
	int hit = 0;
	if (rc == 0 && d.mv_size > CACHE_KEY_LEN && d.mv_size <= CACHE_VAL_MAX &&
	    memcmp(d.mv_data, key, CACHE_KEY_LEN) == 0) {
		const char *p = (const char *)d.mv_data + CACHE_KEY_LEN;
		size_t nl = d.mv_size - CACHE_KEY_LEN - 1;
		if (p[0] == 'c' && nl == 0) {
			*v = V_CLEAN;
			virus[0] = '\0';
			hit = 1;
		} else if (p[0] == 'i' && nl > 0 && nl < vlen && memchr(p + 1, '\0', nl) == NULL) {
			*v = V_INFECTED;
			memcpy(virus, p + 1, nl);
			virus[nl] = '\0';
			hit = 1;
		}
	} else if (rc != 0 && rc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		cache_off(c, "get", rc);
		return 0;
	}
	mdb_txn_abort(txn);
	return hit;
}

/* The generation's key: shorter than any entry's key, so never one of them. */
static const char cache_gen_key[] = "generation";

uint64_t cache_generation(struct cache *c)
{
	MDB_txn *txn;
	MDB_val k = {sizeof cache_gen_key, (void *)cache_gen_key}, d;
	uint64_t g = 0;
	if (c->env == NULL)
		return 0;
	int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
	if (rc != 0) {
		cache_off(c, "read", rc);
		return 0;
	}
	if (mdb_get(txn, c->dbi, &k, &d) == 0 && d.mv_size == sizeof g)
		memcpy(&g, d.mv_data, sizeof g);
	mdb_txn_abort(txn);
	return g;
}

void cache_generation_bump(struct cache *c)
{
	MDB_txn *txn;
	MDB_val k = {sizeof cache_gen_key, (void *)cache_gen_key}, d;
	uint64_t g = 0;
	if (c->env == NULL)
		return;
	int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc != 0) {
		cache_off(c, "write", rc);
		return;
	}
	/* One writer at a time (LMDB's write lock): runners bumping together each count. */
	if (mdb_get(txn, c->dbi, &k, &d) == 0 && d.mv_size == sizeof g)
		memcpy(&g, d.mv_data, sizeof g);
	g++;
	d.mv_size = sizeof g;
	d.mv_data = &g;
	if ((rc = mdb_put(txn, c->dbi, &k, &d, 0)) != 0) {
		mdb_txn_abort(txn);
		cache_off(c, "write", rc);
		return;
	}
	if ((rc = mdb_txn_commit(txn)) != 0)
		cache_off(c, "write", rc);
}

void cache_put(struct cache *c, const unsigned char key[CACHE_KEY_LEN], enum verdict v,
               const char *virus)
{
	if (c->env == NULL || (v != V_CLEAN && v != V_INFECTED))
		return;
	if (v == V_INFECTED && (virus == NULL || virus[0] == '\0' || strlen(virus) > 255))
		return;
	if (c->npending == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->pending = xrealloc(c->pending, c->cap * sizeof *c->pending);
	}
	struct cache_pending *p = &c->pending[c->npending++];
	memcpy(p->key, key, CACHE_KEY_LEN);
	p->verdict = v == V_CLEAN ? 'c' : 'i';
	bsnprintf(p->virus, sizeof p->virus, "%s", v == V_INFECTED ? virus : "");
}

/* Evict about an eighth of the entries, and at least room for the pending ones, from a
 * random point on. */
static int cache_evict(struct cache *c)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_stat ms;
	unsigned char start[CACHE_KEY_LEN];
	int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc != 0)
		return rc;
	if ((rc = mdb_stat(txn, c->dbi, &ms)) != 0 ||
	    (rc = mdb_cursor_open(txn, c->dbi, &cur)) != 0) {
		mdb_txn_abort(txn);
		return rc;
	}
	size_t want = ms.ms_entries / 8, gone = 0;
	if (want < c->npending + 16)
		want = c->npending + 16;
	uint64_t seed = (uint64_t)now_us_wall() ^ (uint64_t)getpid() << 32;
	for (size_t i = 0; i < sizeof start; i++) {
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		start[i] = (unsigned char)(seed >> 56);
	}
	MDB_val k = {sizeof start, start}, d;
	rc = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE);
	if (rc == MDB_NOTFOUND)
		rc = mdb_cursor_get(cur, &k, &d, MDB_FIRST);
	/* Entries only: the generation (a shorter key) is never evicted, or older entries
	 * would be reachable again. Around the key space at most once. */
	for (int wrapped = 0; gone < want;) {
		if (rc == MDB_NOTFOUND && !wrapped) {
			wrapped = 1;
			rc = mdb_cursor_get(cur, &k, &d, MDB_FIRST);
			continue;
		}
		if (rc != 0)
			break;
		if (k.mv_size != CACHE_KEY_LEN) {
			rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT);
			continue;
		}
		if ((rc = mdb_cursor_del(cur, 0)) != 0)
			break;
		gone++;
		/* After a delete the cursor stands on the next entry (or past the end). */
		rc = mdb_cursor_get(cur, &k, &d, MDB_GET_CURRENT);
		if (rc == EINVAL)
			rc = MDB_NOTFOUND;
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return rc;
	}
	log_info(NULL, "verdict cache %s full: evicted %zu of %zu entries", c->path, gone,
	         (size_t)ms.ms_entries);
	return mdb_txn_commit(txn);
}

static int cache_write(struct cache *c)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc != 0)
		return rc;
	for (size_t i = 0; i < c->npending; i++) {
		unsigned char val[CACHE_VAL_MAX];
		struct cache_pending *p = &c->pending[i];
		size_t vl = strlen(p->virus);
		memcpy(val, p->key, CACHE_KEY_LEN);
		val[CACHE_KEY_LEN] = p->verdict;
		memcpy(val + CACHE_KEY_LEN + 1, p->virus, vl);
		MDB_val k = {CACHE_KEY_LEN, p->key}, d = {CACHE_KEY_LEN + 1 + vl, val};
		if ((rc = mdb_put(txn, c->dbi, &k, &d, 0)) != 0) {
			mdb_txn_abort(txn);
			return rc;
		}
	}
	return mdb_txn_commit(txn);
}

void cache_commit(struct cache *c)
{
	if (c->env == NULL || c->npending == 0) {
		c->npending = 0;
		return;
	}
	int rc = cache_write(c);
	if (rc == MDB_MAP_FULL) {
		rc = cache_evict(c);
		if (rc == 0)
			rc = cache_write(c);
		/* Still full (fragmented pages): drop these; a miss is safe. */
		if (rc == MDB_MAP_FULL)
			rc = 0;
	}
	c->npending = 0;
	if (rc != 0)
		cache_off(c, "write", rc);
}
