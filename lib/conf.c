/*
 * conf - see conf.h. A small schema walk over libconfig's tree: every key is checked
 * against the list of known keys of its group, so a typo is an error with its line
 * instead of a silently ignored setting.
 */
#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <pwd.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "envelope.h"
#include "pool.h"
#include "util.h"

struct conf_ctx {
	const char *file;
	char *confdir;
	char *err;
	size_t errlen;
	int failed;
};

static void conf_fail(struct conf_ctx *cx, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conf_fail(struct conf_ctx *cx, const config_setting_t *s, const char *fmt, ...)
{
	if (cx->failed)
		return; /* the first error is the one worth reading */
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	/* The root group has no line of its own; a key missing there is reported at line 1. */
	int line = s ? config_setting_source_line(s) : 0;
	snprintf(cx->err, cx->errlen, "%s:%d: %s", cx->file, line > 0 ? line : 1, msg);
	cx->failed = 1;
}

static int conf_name_safe(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++) {
		char c = s[n];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return 0;
	}
	return n > 0 && n <= 64;
}

/* Every member of group s must be one of keys[]. */
static void conf_check_keys(struct conf_ctx *cx, const config_setting_t *s, const char *what,
                            const char *const *keys)
{
	int n = config_setting_length(s);
	for (int i = 0; i < n; i++) {
		config_setting_t *m = config_setting_get_elem(s, (unsigned)i);
		const char *name = config_setting_name(m);
		int ok = 0;
		for (const char *const *k = keys; *k; k++)
			if (name && strcmp(name, *k) == 0)
				ok = 1;
		if (!ok) {
			struct buf b;
			buf_init(&b);
			for (const char *const *k = keys; *k; k++)
				buf_printf(&b, "%s%s", k == keys ? "" : ", ", *k);
			conf_fail(cx, m, "unknown key '%s' in %s (known keys: %s)",
			          name ? name : "?", what, buf_cstr(&b));
			buf_free(&b);
		}
	}
}

/* Lexically clean an absolute path ("/a/b/../c/./d" -> "/a/c/d"), so that paths in logs
 * and status read as the administrator expects. Symlinks are not resolved. */
static char *conf_path_clean(const char *in)
{
	char *out = xmalloc(strlen(in) + 2);
	size_t n = 0;
	const char *p = in;
	while (*p) {
		while (*p == '/')
			p++;
		const char *seg = p;
		while (*p && *p != '/')
			p++;
		size_t len = (size_t)(p - seg);
		if (len == 0 || (len == 1 && seg[0] == '.'))
			continue;
		if (len == 2 && seg[0] == '.' && seg[1] == '.') {
			while (n > 0 && out[n - 1] != '/')
				n--;
			if (n > 0)
				n--;
			continue;
		}
		out[n++] = '/';
		memcpy(out + n, seg, len);
		n += len;
	}
	if (n == 0)
		out[n++] = '/';
	out[n] = '\0';
	return out;
}

static char *conf_path_resolve(struct conf_ctx *cx, const char *p)
{
	if (p[0] == '/')
		return conf_path_clean(p);
	char *joined = xasprintf("%s/%s", cx->confdir, p);
	char *clean = conf_path_clean(joined);
	free(joined);
	return clean;
}

static const config_setting_t *conf_get(const config_setting_t *g, const char *key)
{
	return g ? config_setting_get_member(g, key) : NULL;
}

static void conf_int(struct conf_ctx *cx, const config_setting_t *g, const char *key, int *out,
                     long long min, long long max)
{
	const config_setting_t *s = conf_get(g, key);
	if (s == NULL)
		return;
	int t = config_setting_type(s);
	if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64) {
		conf_fail(cx, s, "'%s' must be an integer, for example %s = %lld;", key, key, min);
		return;
	}
	long long v = config_setting_get_int64(s);
	if (v < min || v > max) {
		conf_fail(cx, s, "'%s' = %lld is out of range (%lld to %lld)", key, v, min, max);
		return;
	}
	*out = (int)v;
}

static void conf_u64(struct conf_ctx *cx, const config_setting_t *g, const char *key, uint64_t *out,
                     uint64_t min)
{
	const config_setting_t *s = conf_get(g, key);
	if (s == NULL)
		return;
	int t = config_setting_type(s);
	if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64) {
		conf_fail(cx, s,
		          "'%s' must be an integer (bytes or a count); use an L suffix "
		          "for values over 2147483647",
		          key);
		return;
	}
	long long v = config_setting_get_int64(s);
	if (v < 0 || (uint64_t)v < min) {
		conf_fail(cx, s, "'%s' = %lld must be at least %llu", key, v,
		          (unsigned long long)min);
		return;
	}
	*out = (uint64_t)v;
}

static void conf_bool(struct conf_ctx *cx, const config_setting_t *g, const char *key, int *out)
{
	const config_setting_t *s = conf_get(g, key);
	if (s == NULL)
		return;
	if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
		conf_fail(cx, s, "'%s' must be true or false", key);
		return;
	}
	*out = config_setting_get_bool(s);
}

static const char *conf_str(struct conf_ctx *cx, const config_setting_t *g, const char *key,
                            int required)
{
	const config_setting_t *s = conf_get(g, key);
	if (s == NULL) {
		if (required)
			conf_fail(cx, g, "missing '%s' (add %s = \"...\";)", key, key);
		return NULL;
	}
	if (config_setting_type(s) != CONFIG_TYPE_STRING) {
		conf_fail(cx, s, "'%s' must be a string in double quotes", key);
		return NULL;
	}
	return config_setting_get_string(s);
}

/* A list/array of strings into a NULL-terminated vector; {confdir} is expanded. */
static char **conf_strv(struct conf_ctx *cx, const config_setting_t *g, const char *key,
                        int required)
{
	const config_setting_t *s = conf_get(g, key);
	if (s == NULL) {
		if (required)
			conf_fail(cx, g, "missing '%s' (a list of strings: %s = [ \"...\" ];)", key,
			          key);
		return NULL;
	}
	if (!config_setting_is_aggregate(s) || config_setting_is_group(s)) {
		conf_fail(cx, s, "'%s' must be a list of strings: %s = [ \"...\" ];", key, key);
		return NULL;
	}
	int n = config_setting_length(s);
	char **v = xcalloc((size_t)n + 1, sizeof(char *));
	for (int i = 0; i < n; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		if (config_setting_type(e) != CONFIG_TYPE_STRING) {
			conf_fail(cx, e, "'%s' must contain only strings", key);
			v[i] = xstrdup("");
			continue;
		}
		const char *str = config_setting_get_string(e);
		const char *ph = strstr(str, "{confdir}");
		if (ph)
			v[i] = xasprintf("%.*s%s%s", (int)(ph - str), str, cx->confdir, ph + 9);
		else
			v[i] = xstrdup(str);
	}
	if (required && n == 0)
		conf_fail(cx, s, "'%s' must not be empty", key);
	return v;
}

static int *conf_intv(struct conf_ctx *cx, const config_setting_t *g, const char *key, size_t *n)
{
	const config_setting_t *s = conf_get(g, key);
	*n = 0;
	if (s == NULL)
		return NULL;
	if (!config_setting_is_aggregate(s) || config_setting_is_group(s)) {
		conf_fail(cx, s, "'%s' must be a list of exit codes: %s = [ 0 ];", key, key);
		return NULL;
	}
	int len = config_setting_length(s);
	int *v = xcalloc((size_t)len + 1, sizeof(int));
	for (int i = 0; i < len; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		if (config_setting_type(e) != CONFIG_TYPE_INT || config_setting_get_int(e) < 0 ||
		    config_setting_get_int(e) > 255) {
			conf_fail(cx, e, "'%s' must contain exit codes from 0 to 255", key);
			continue;
		}
		v[(*n)++] = config_setting_get_int(e);
	}
	return v;
}

static void strv_free(char **v)
{
	if (v == NULL)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

static int argv_has(char **argv, const char *ph)
{
	for (char **p = argv; p && *p; p++)
		if (strstr(*p, ph))
			return 1;
	return 0;
}

/*
 * peer_user: who a clamd behind a unix socket must run as (SO_PEERCRED). A user name or a
 * numeric uid. Unset: root, "clamav" if that user exists, and (added by clamd.c) the
 * runner's own uid. Names are resolved here, once, so that a missing user is a config
 * error with its line, not a hold of every message.
 */
static void conf_clamd_peer(struct conf_ctx *cx, const config_setting_t *s, struct conf_scanner *sc)
{
	const char *u = conf_str(cx, s, "peer_user", 0);
	struct passwd *pw;
	uint64_t uid;

	sc->n_clamd_peer_uids = 0;
	if (u == NULL) {
		sc->clamd_peer_default = 1;
		sc->clamd_peer_uids[sc->n_clamd_peer_uids++] = 0;
		pw = getpwnam("clamav");
		if (pw != NULL && pw->pw_uid != 0)
			sc->clamd_peer_uids[sc->n_clamd_peer_uids++] = pw->pw_uid;
		return;
	}
	sc->clamd_peer_default = 0;
	if (*u != '\0' && parse_u64(u, &uid) == 0) {
		if (uid >= (uint64_t)(uid_t)-1) {
			conf_fail(cx, conf_get(s, "peer_user"), "peer_user uid %s is out of range",
			          u);
			return;
		}
		sc->clamd_peer_uids[sc->n_clamd_peer_uids++] = (uid_t)uid;
		return;
	}
	pw = getpwnam(u);
	if (pw == NULL) {
		conf_fail(cx, conf_get(s, "peer_user"),
		          "peer_user '%s' is not a user on this system (the user clamd runs as, "
		          "or a numeric uid)",
		          u);
		return;
	}
	sc->clamd_peer_uids[sc->n_clamd_peer_uids++] = pw->pw_uid;
}

static void conf_scanner_parse(struct conf_ctx *cx, const config_setting_t *s,
                               struct conf_scanner *sc)
{
	static const char *const keys[] = {"name",
	                                   "type",
	                                   "mode",
	                                   "argv",
	                                   "clean_codes",
	                                   "infected_codes",
	                                   "virus_regex",
	                                   "version_argv",
	                                   "timeout",
	                                   "max_concurrent",
	                                   "backup",
	                                   "workdir",
	                                   "rlimit_as",
	                                   "rlimit_cpu",
	                                   "rlimit_nofile",
	                                   "addresses",
	                                   "stream_max_length",
	                                   "max_file_size",
	                                   "peer_user",
	                                   "canary",
	                                   "balance",
	                                   "down_min",
	                                   "down_max",
	                                   "cache",
	                                   "cache_size",
	                                   NULL};
	memset(sc, 0, sizeof *sc);
	sc->line = config_setting_source_line(s);
	sc->timeout = 60;
	sc->max_concurrent = 2;
	sc->stream_max_length = 25u << 20;
	/* At most clamd's own MaxFileSize and MaxScanSize (100M/400M in ClamAV 1.x, 25M/100M
	 * before): a part clamd would only partly scan must be unscannable here. */
	sc->max_file_size = 25u << 20;
	sc->rlimit_as = 0;
	sc->rlimit_cpu = 0;
	sc->rlimit_nofile = 256;
	if (!config_setting_is_group(s)) {
		conf_fail(cx, s, "each scanner must be a group: { name = \"...\"; ... }");
		return;
	}
	conf_check_keys(cx, s, "a scanner", keys);
	const char *name = conf_str(cx, s, "name", 1);
	sc->name = xstrdup(name ? name : "?");
	if (name && !conf_name_safe(name))
		conf_fail(cx, conf_get(s, "name"),
		          "scanner name '%s' may only use letters, digits, '-' and '_'", name);
	const char *type = conf_str(cx, s, "type", 0);
	const char *mode = conf_str(cx, s, "mode", 0);
	if (type == NULL || strcmp(type, "exec") == 0) {
		sc->type = SCANNER_EXEC;
		if (mode == NULL || strcmp(mode, "per-attachment") == 0)
			sc->mode = MODE_PER_ATTACHMENT;
		else if (strcmp(mode, "per-message") == 0)
			sc->mode = MODE_PER_MESSAGE;
		else
			conf_fail(
			    cx, conf_get(s, "mode"),
			    "mode '%s' is unknown for an exec scanner (use \"per-attachment\" "
			    "or \"per-message\")",
			    mode);
	} else if (strcmp(type, "clamd") == 0) {
		sc->type = SCANNER_CLAMD;
		sc->mode = MODE_CLAMD;
		if (mode && strcmp(mode, "clamd") != 0)
			conf_fail(cx, conf_get(s, "mode"),
			          "a clamd scanner has no mode other than "
			          "\"clamd\"; remove the mode line");
	} else {
		conf_fail(cx, conf_get(s, "type"),
		          "type '%s' is unknown (use \"exec\" or \"clamd\")", type);
	}
	conf_int(cx, s, "timeout", &sc->timeout, 1, 86400);
	conf_int(cx, s, "max_concurrent", &sc->max_concurrent, 1, 1024);
	conf_bool(cx, s, "backup", &sc->backup);
	sc->canary = 1;
	conf_bool(cx, s, "canary", &sc->canary);
	conf_u64(cx, s, "rlimit_as", &sc->rlimit_as, 0);
	conf_u64(cx, s, "rlimit_cpu", &sc->rlimit_cpu, 0);
	conf_u64(cx, s, "rlimit_nofile", &sc->rlimit_nofile, 16);
	conf_u64(cx, s, "stream_max_length", &sc->stream_max_length, 1);
	const char *wd = conf_str(cx, s, "workdir", 0);
	if (wd)
		sc->workdir = conf_path_resolve(cx, wd);
	if (sc->type != SCANNER_CLAMD) {
		if (conf_get(s, "peer_user") != NULL || conf_get(s, "max_file_size") != NULL ||
		    conf_get(s, "balance") != NULL || conf_get(s, "down_min") != NULL ||
		    conf_get(s, "down_max") != NULL || conf_get(s, "cache") != NULL ||
		    conf_get(s, "cache_size") != NULL)
			conf_fail(cx, s,
			          "scanner '%s': peer_user, max_file_size, balance, down_min, "
			          "down_max, cache and cache_size are for type \"clamd\" only",
			          sc->name);
	}
	if (sc->type == SCANNER_CLAMD) {
		conf_u64(cx, s, "max_file_size", &sc->max_file_size, 1);
		const char *bal = conf_str(cx, s, "balance", 0);
		sc->balance = POOL_FAILOVER;
		if (bal && (sc->balance = pool_balance_parse(bal)) < 0)
			conf_fail(cx, conf_get(s, "balance"),
			          "balance '%s' is unknown (use \"failover\", \"round-robin\" or "
			          "\"least-busy\")",
			          bal);
		sc->down_min = 2;
		sc->down_max = 60;
		conf_int(cx, s, "down_min", &sc->down_min, 1, 86400);
		conf_int(cx, s, "down_max", &sc->down_max, 1, 86400);
		if (sc->down_max < sc->down_min)
			conf_fail(cx, conf_get(s, "down_max"),
			          "scanner '%s': down_max (%d) is less than down_min (%d)",
			          sc->name, sc->down_max, sc->down_min);
		sc->cache = 1;
		conf_bool(cx, s, "cache", &sc->cache);
		sc->cache_size = 64u << 20;
		conf_u64(cx, s, "cache_size", &sc->cache_size, 1u << 20);
		conf_clamd_peer(cx, s, sc);
		sc->clamd_addrs = conf_strv(cx, s, "addresses", 1);
		for (char **a = sc->clamd_addrs; a && *a; a++) {
			if (strncmp(*a, "unix:", 5) == 0) {
				if ((*a)[5] != '/') {
					char *abs = conf_path_resolve(cx, *a + 5);
					free(*a);
					*a = xasprintf("unix:%s", abs);
					free(abs);
				}
			} else if (strncmp(*a, "tcp:", 4) != 0 || strchr(*a + 4, ':') == NULL) {
				conf_fail(cx, conf_get(s, "addresses"),
				          "clamd address '%s' must be \"unix:/path\" or "
				          "\"tcp:HOST:PORT\"",
				          *a);
			}
		}
		return;
	}
	sc->argv = conf_strv(cx, s, "argv", 1);
	if (sc->argv && sc->argv[0]) {
		if (sc->argv[0][0] != '/') {
			char *abs = conf_path_resolve(cx, sc->argv[0]);
			free(sc->argv[0]);
			sc->argv[0] = abs;
		}
		if (access(sc->argv[0], X_OK) < 0)
			conf_fail(cx, conf_get(s, "argv"),
			          "scanner '%s': %s: %s (install it, or fix argv[0])", sc->name,
			          sc->argv[0], strerror(errno));
		if (sc->mode == MODE_PER_ATTACHMENT && !argv_has(sc->argv, "{file}"))
			conf_fail(
			    cx, conf_get(s, "argv"),
			    "scanner '%s': a per-attachment argv needs the {file} placeholder",
			    sc->name);
		if (sc->mode == MODE_PER_MESSAGE && !argv_has(sc->argv, "{files}") &&
		    !argv_has(sc->argv, "{dir}"))
			conf_fail(cx, conf_get(s, "argv"),
			          "scanner '%s': a per-message argv needs {files} or {dir}",
			          sc->name);
	}
	sc->version_argv = conf_strv(cx, s, "version_argv", 0);
	if (sc->version_argv && sc->version_argv[0] && sc->version_argv[0][0] != '/') {
		char *abs = conf_path_resolve(cx, sc->version_argv[0]);
		free(sc->version_argv[0]);
		sc->version_argv[0] = abs;
	}
	sc->clean_codes = conf_intv(cx, s, "clean_codes", &sc->n_clean);
	sc->infected_codes = conf_intv(cx, s, "infected_codes", &sc->n_infected);
	if (sc->n_clean == 0)
		conf_fail(cx, s,
		          "scanner '%s': missing clean_codes (for clamscan: clean_codes = [ 0 ];)",
		          sc->name);
	if (sc->n_infected == 0)
		conf_fail(cx, s,
		          "scanner '%s': missing infected_codes (for clamscan: "
		          "infected_codes = [ 1 ];)",
		          sc->name);
	for (size_t i = 0; i < sc->n_clean; i++)
		for (size_t j = 0; j < sc->n_infected; j++)
			if (sc->clean_codes[i] == sc->infected_codes[j])
				conf_fail(
				    cx, conf_get(s, "infected_codes"),
				    "scanner '%s': exit code %d is both clean and infected; an "
				    "exit code must mean one thing",
				    sc->name, sc->clean_codes[i]);
	const char *re = conf_str(cx, s, "virus_regex", 0);
	if (re) {
		regex_t rx;
		int rc = regcomp(&rx, re, REG_EXTENDED | REG_NEWLINE);
		if (rc != 0) {
			char msg[256];
			regerror(rc, &rx, msg, sizeof msg);
			conf_fail(
			    cx, conf_get(s, "virus_regex"),
			    "scanner '%s': virus_regex is not a valid POSIX extended regex: %s",
			    sc->name, msg);
		} else {
			if (rx.re_nsub < 1)
				conf_fail(
				    cx, conf_get(s, "virus_regex"),
				    "scanner '%s': virus_regex needs one capture group for the "
				    "virus name, e.g. \": (.+) FOUND$\"",
				    sc->name);
			regfree(&rx);
		}
		sc->virus_regex = xstrdup(re);
	} else if (sc->mode == MODE_PER_MESSAGE) {
		conf_fail(cx, s,
		          "scanner '%s': per-message mode needs virus_regex to tell which "
		          "file is infected, e.g. \"^(.+): (.+) FOUND$\"",
		          sc->name);
	}
}

static void conf_scanner_free(struct conf_scanner *sc)
{
	free(sc->name);
	strv_free(sc->argv);
	free(sc->clean_codes);
	free(sc->infected_codes);
	free(sc->virus_regex);
	strv_free(sc->version_argv);
	strv_free(sc->clamd_addrs);
	free(sc->workdir);
}

/* The lmtp group: lmtpd's listeners and bounds. Kept apart from conf_parse so that the
 * intake's keys stay in one place. */
static void conf_parse_lmtp(struct conf_ctx *cx, const config_setting_t *root, struct conf *c)
{
	static const char *const lmtp_keys[] = {
	    "enabled",        "socket",           "socket_mode", "listen_tcp", "max_connections",
	    "max_recipients", "max_message_size", "timeout",     NULL};
	struct conf_lmtp *l = &c->lmtp;
	l->enabled = 0;
	l->socket_mode = 0660;
	l->max_connections = 50;
	l->max_recipients = 1000;
	l->max_message_size = c->splitter.max_message_size;
	l->timeout = 300;
	const char *sock = NULL, *tcp = NULL;
	const config_setting_t *g = conf_get(root, "lmtp");
	if (g) {
		conf_check_keys(cx, g, "lmtp", lmtp_keys);
		conf_bool(cx, g, "enabled", &l->enabled);
		sock = conf_str(cx, g, "socket", 0);
		/* A string: libconfig has no octal numbers. */
		const char *sm = conf_str(cx, g, "socket_mode", 0);
		if (sm) {
			char *end;
			long v = strtol(sm, &end, 8);
			if (sm[0] < '0' || sm[0] > '7' || *end != '\0' || v < 0 || v > 0777)
				conf_fail(
				    cx, conf_get(g, "socket_mode"),
				    "socket_mode '%s' must be octal permission bits, e.g. \"0660\"",
				    sm);
			else
				l->socket_mode = (int)v;
		}
		tcp = conf_str(cx, g, "listen_tcp", 0);
		conf_int(cx, g, "max_connections", &l->max_connections, 1, 10000);
		int mr = (int)l->max_recipients;
		conf_int(cx, g, "max_recipients", &mr, 1, ENV_RCPT_MAX);
		l->max_recipients = (size_t)mr;
		conf_u64(cx, g, "max_message_size", &l->max_message_size, 1);
		conf_int(cx, g, "timeout", &l->timeout, 1, 3600);
	}
	l->socket =
	    sock && sock[0] ? conf_path_resolve(cx, sock) : xasprintf("%s/run/lmtp", c->spool_dir);
	/* TCP only on loopback: the intake trusts whoever connects as much as whoever can
	 * write into inbound/, so it must never face the network. */
	if (tcp && tcp[0] && strncmp(tcp, "127.0.0.1:", 10) != 0 && strncmp(tcp, "[::1]:", 6) != 0)
		conf_fail(cx, conf_get(g, "listen_tcp"),
		          "listen_tcp '%s' must be \"127.0.0.1:PORT\" or \"[::1]:PORT\" (loopback "
		          "only; \"\" turns TCP off)",
		          tcp);
	l->listen_tcp = xstrdup(tcp ? tcp : "");
}

/* The fleet group (docs/FLEET.md). Credentials never live here: a conninfo names a
 * service or a passfile, which only spoold's user can read; a password in this file,
 * which every stage reads, is refused. */
static void conf_parse_fleet(struct conf_ctx *cx, const config_setting_t *root, struct conf *c)
{
	static const char *const fleet_keys[] = {"node",         "conninfo",       "admin_conninfo",
	                                         "service_file", "batch",          "max_backlog",
	                                         "poll",         "retention_days", NULL};
	struct conf_fleet *f = &c->fleet;
	f->batch = 500;
	f->max_backlog = 100000;
	f->poll = 5;
	f->retention_days = 90;
	const config_setting_t *g = conf_get(root, "fleet");
	const char *node = NULL, *ci = NULL, *aci = NULL, *sf = NULL;
	f->enabled = g != NULL;
	if (g) {
		conf_check_keys(cx, g, "fleet", fleet_keys);
		node = conf_str(cx, g, "node", 1);
		if (node && !conf_name_safe(node))
			conf_fail(cx, conf_get(g, "node"),
			          "fleet node '%s' must be 1-64 letters, digits, '-' or '_'", node);
		ci = conf_str(cx, g, "conninfo", 0);
		aci = conf_str(cx, g, "admin_conninfo", 0);
		sf = conf_str(cx, g, "service_file", 0);
		const char *const k[] = {"conninfo", "admin_conninfo"};
		const char *const v[] = {ci, aci};
		for (int i = 0; i < 2; i++)
			if (v[i] && strstr(v[i], "password"))
				conf_fail(cx, conf_get(g, k[i]),
				          "fleet %s must not hold a password: name a passfile or a "
				          "service (service_file) that only spoold's user can read",
				          k[i]);
		conf_int(cx, g, "batch", &f->batch, 1, 10000);
		conf_int(cx, g, "max_backlog", &f->max_backlog, 1, 100000000);
		conf_int(cx, g, "poll", &f->poll, 1, 3600);
		conf_int(cx, g, "retention_days", &f->retention_days, 0, 36500);
	}
	f->node = xstrdup(node ? node : "");
	f->conninfo = xstrdup(ci ? ci : "");
	f->admin_conninfo = xstrdup(aci ? aci : "");
	f->service_file = sf && sf[0] ? conf_path_resolve(cx, sf) : xstrdup("");
}

static const char *const conf_role_keys[ROLE__COUNT] = {
    [ROLE_SPOOL] = "user",
    [ROLE_SPLITTER] = "splitter_user",
    [ROLE_RUNNER] = "runner_user",
    [ROLE_ROUTER] = "router_user",
    [ROLE_CONNECTOR] = "connector_user",
};

const char *conf_role_name(enum conf_role r)
{
	if ((unsigned)r >= ROLE__COUNT)
		log_panic("conf_role_name: role %d out of range", (int)r);
	return conf_role_keys[r];
}

int conf_role_of_stage(const char *stage)
{
	if (!strcmp(stage, "splitter") || !strcmp(stage, "lmtpd"))
		return ROLE_SPLITTER;
	if (!strcmp(stage, "scanner-runner"))
		return ROLE_RUNNER;
	if (!strcmp(stage, "router"))
		return ROLE_ROUTER;
	if (!strcmp(stage, "connectors"))
		return ROLE_CONNECTOR;
	return -1;
}

/* Names to ids once, at load: a missing user is a config error with its line, not a
 * surprise at the first restart. A role without a user of its own runs as the spool's. */
static void conf_roles_resolve(struct conf_ctx *cx, const config_setting_t *root, struct conf *c)
{
	for (int r = 0; r < ROLE__COUNT; r++) {
		const char *u = conf_str(cx, root, conf_role_keys[r], 0);
		struct conf_role_user *ru = &c->roles[r];
		ru->name = xstrdup(u ? u : "");
		ru->uid = (uid_t)-1;
		ru->gid = (gid_t)-1;
		if (ru->name[0] == '\0') {
			if (r != ROLE_SPOOL) {
				free(ru->name);
				*ru = (struct conf_role_user){xstrdup(c->roles[ROLE_SPOOL].name),
				                              c->roles[ROLE_SPOOL].uid,
				                              c->roles[ROLE_SPOOL].gid};
			}
			continue;
		}
		errno = 0;
		struct passwd *pw = getpwnam(ru->name);
		/* An unknown `user` is reported where it is used (lib/user.c: exit 78 when a
		 * program started as root would become it), as before these keys existed. */
		if (pw == NULL && r == ROLE_SPOOL)
			continue;
		if (pw == NULL) {
			conf_fail(
			    cx, conf_get(root, conf_role_keys[r]),
			    "%s '%s' is not a user on this system (dist/spoold.sysusers makes "
			    "the bundled ones)",
			    conf_role_keys[r], ru->name);
			continue;
		}
		ru->uid = pw->pw_uid;
		ru->gid = pw->pw_gid;
	}
	c->separated = 0;
	for (int r = 1; r < ROLE__COUNT; r++)
		if (c->roles[r].uid != c->roles[ROLE_SPOOL].uid)
			c->separated = 1;
	if (c->separated && c->roles[ROLE_SPOOL].uid == (uid_t)-1)
		conf_fail(cx, conf_get(root, "splitter_user"),
		          "users of their own for the stages need `user` (the spool's user) too");
}

uid_t conf_role_uid(const struct conf *c, enum conf_role r)
{
	if ((unsigned)r >= ROLE__COUNT)
		log_panic("conf_role_uid: role %d out of range", (int)r);
	/* The configured users are in force only when the pipeline was started as root and
	 * switched to them; started as a plain user, every program runs as that user. A
	 * program sees which by its own uid. */
	uid_t me = geteuid();
	for (int k = 0; k < ROLE__COUNT; k++)
		if (c->roles[k].uid != (uid_t)-1 && c->roles[k].uid == me)
			return c->roles[r].uid != (uid_t)-1 ? c->roles[r].uid : me;
	return me;
}

static void conf_parse(struct conf_ctx *cx, config_t *cfg, struct conf *c)
{
	static const char *const top_keys[] = {"spool_dir",
	                                       "log",
	                                       "rescan_interval",
	                                       "splitter",
	                                       "scanner_runner",
	                                       "router",
	                                       "scanners",
	                                       "connectors",
	                                       "user",
	                                       "control_group",
	                                       "canary_interval",
	                                       "metrics",
	                                       "allow_root", /* lib/user.c user_root_check */
	                                       "lmtp",
	                                       "splitter_user", /* conf_roles_resolve */
	                                       "runner_user",
	                                       "router_user",
	                                       "connector_user",
	                                       "scanner_user", /* lib/broker.h */
	                                       "fleet",        /* conf_parse_fleet */
	                                       NULL};
	static const char *const metrics_keys[] = {"file", "interval", "group", NULL};
	static const char *const log_keys[] = {"target", "level", NULL};
	static const char *const split_keys[] = {"instances",       "max_message_size",
	                                         "max_parts",       "max_depth",
	                                         "max_part_size",   "max_total_size",
	                                         "max_expansion",   "scan_raw_message",
	                                         "poison_attempts", NULL};
	static const char *const runner_keys[] = {"instances", "max_message_scan_time",
	                                          "max_message_scan_runs", "slot_wait", NULL};
	static const char *const router_keys[] = {
	    "instances",         "default_connector",  "hold_retry_min",  "hold_retry_max",
	    "max_hold_time",     "hold_expiry_action", "quarantine_days", "add_scanned_header",
	    "infected_action",   "banned_extensions",  "banned_types",    "notify_admin",
	    "notify_recipients", "notify_from",        "expire_interval", NULL};
	static const char *const conn_keys[] = {"name",      "domains", "type",        "relay",
	                                        "helo",      "maildir", "timeout",     "retry_min",
	                                        "retry_max", "max_age", "unix_socket", NULL};
	config_setting_t *root = config_root_setting(cfg);

	conf_check_keys(cx, root, "the top level", top_keys);
	const char *sd = conf_str(cx, root, "spool_dir", 1);
	c->spool_dir = sd ? conf_path_resolve(cx, sd) : xstrdup("");
	c->rescan_interval = 30;
	conf_int(cx, root, "rescan_interval", &c->rescan_interval, 1, 3600);
	const char *u = conf_str(cx, root, "user", 0);
	c->user = xstrdup(u ? u : "");
	const char *cg = conf_str(cx, root, "control_group", 0);
	c->control_group = xstrdup(cg ? cg : "");
	conf_bool(cx, root, "allow_root", &c->allow_root);
	conf_roles_resolve(cx, root, c);
	/* scanner_user (lib/broker.h, spoold/broker.c): the user the exec scanners run as. */
	const char *su = conf_str(cx, root, "scanner_user", 0);
	c->scanner_user = xstrdup(su ? su : "");
	c->canary_interval = 300;
	conf_int(cx, root, "canary_interval", &c->canary_interval, 0, 86400);
	c->metrics.interval = 15;
	c->metrics.file = xasprintf("%s/run/metrics.prom", c->spool_dir);
	const config_setting_t *mg = conf_get(root, "metrics");
	const char *mgroup = mg ? conf_str(cx, mg, "group", 0) : NULL;
	c->metrics.group = xstrdup(mgroup ? mgroup : "");
	if (mg) {
		conf_check_keys(cx, mg, "metrics", metrics_keys);
		conf_int(cx, mg, "interval", &c->metrics.interval, 1, 3600);
		const char *mf = conf_str(cx, mg, "file", 0);
		if (mf) {
			free(c->metrics.file);
			c->metrics.file = mf[0] ? conf_path_resolve(cx, mf) : xstrdup("");
		}
	}

	c->log_target = LOG_TO_STDERR;
	c->log_level = LOG_LVL_INFO;
	const config_setting_t *lg = conf_get(root, "log");
	if (lg) {
		conf_check_keys(cx, lg, "log", log_keys);
		const char *t = conf_str(cx, lg, "target", 0);
		if (t && strcmp(t, "syslog") == 0)
			c->log_target = LOG_TO_SYSLOG;
		else if (t && strcmp(t, "stderr") != 0)
			conf_fail(cx, conf_get(lg, "target"),
			          "log target '%s' is unknown (use \"stderr\" or \"syslog\")", t);
		const char *l = conf_str(cx, lg, "level", 0);
		static const char *levels[] = {"debug", "info", "warning", "error"};
		if (l) {
			size_t i;
			for (i = 0; i < ARRAY_LEN(levels); i++)
				if (strcmp(l, levels[i]) == 0)
					c->log_level = (enum log_level)i;
			for (i = 0; i < ARRAY_LEN(levels) && strcmp(l, levels[i]) != 0; i++)
				;
			if (i == ARRAY_LEN(levels))
				conf_fail(
				    cx, conf_get(lg, "level"),
				    "log level '%s' is unknown (use debug, info, warning or error)",
				    l);
		}
	}

	struct conf_splitter *sp = &c->splitter;
	conf_splitter_defaults(sp);
	const config_setting_t *g = conf_get(root, "splitter");
	if (g) {
		conf_check_keys(cx, g, "splitter", split_keys);
		conf_int(cx, g, "instances", &sp->instances, 0, 64);
		conf_u64(cx, g, "max_message_size", &sp->max_message_size, 1);
		conf_u64(cx, g, "max_parts", &sp->max_parts, 1);
		conf_u64(cx, g, "max_depth", &sp->max_depth, 1);
		conf_u64(cx, g, "max_part_size", &sp->max_part_size, 1);
		conf_u64(cx, g, "max_total_size", &sp->max_total_size, 1);
		conf_u64(cx, g, "max_expansion", &sp->max_expansion, 1);
		conf_bool(cx, g, "scan_raw_message", &sp->scan_raw_message);
		conf_int(cx, g, "poison_attempts", &sp->poison_attempts, 1, 100);
	}
	conf_parse_lmtp(cx, root, c);
	conf_parse_fleet(cx, root, c);
	c->runner.instances = 1;
	c->runner.max_message_scan_time = 600;
	c->runner.max_message_scan_runs = 0;
	c->runner.slot_wait = 300;
	g = conf_get(root, "scanner_runner");
	if (g) {
		conf_check_keys(cx, g, "scanner_runner", runner_keys);
		conf_int(cx, g, "instances", &c->runner.instances, 0, 64);
		conf_int(cx, g, "max_message_scan_time", &c->runner.max_message_scan_time, 0,
		         86400);
		conf_int(cx, g, "max_message_scan_runs", &c->runner.max_message_scan_runs, 0,
		         1000000);
		conf_int(cx, g, "slot_wait", &c->runner.slot_wait, 1, 86400);
	}
	struct conf_router *rt = &c->router;
	rt->instances = 1;
	rt->hold_retry_min = 60;
	rt->hold_retry_max = 3600;
	rt->max_hold_time = 5 * 86400;
	rt->quarantine_days = 30;
	rt->add_scanned_header = 1;
	rt->expire_interval = 3600;
	const char *hea = NULL, *ia = NULL, *na = NULL, *nf = NULL;
	const char *dc = NULL;
	g = conf_get(root, "router");
	if (g) {
		conf_check_keys(cx, g, "router", router_keys);
		conf_int(cx, g, "instances", &rt->instances, 0, 64);
		conf_int(cx, g, "hold_retry_min", &rt->hold_retry_min, 1, 86400);
		conf_int(cx, g, "hold_retry_max", &rt->hold_retry_max, 1, 30 * 86400);
		conf_int(cx, g, "max_hold_time", &rt->max_hold_time, 1, 365 * 86400);
		dc = conf_str(cx, g, "default_connector", 0);
		conf_int(cx, g, "quarantine_days", &rt->quarantine_days, 0, 3650);
		hea = conf_str(cx, g, "hold_expiry_action", 0);
		if (hea && strcmp(hea, "quarantine") != 0 && strcmp(hea, "deliver") != 0)
			conf_fail(cx, conf_get(g, "hold_expiry_action"),
			          "hold_expiry_action '%s' is unknown (use \"quarantine\", or "
			          "\"deliver\" to pass mail that could never be scanned)",
			          hea);
		conf_bool(cx, g, "add_scanned_header", &rt->add_scanned_header);
		conf_bool(cx, g, "notify_recipients", &rt->notify_recipients);
		conf_int(cx, g, "expire_interval", &rt->expire_interval, 1, 86400);
		ia = conf_str(cx, g, "infected_action", 0);
		if (ia && strcmp(ia, "quarantine") != 0 && strcmp(ia, "discard") != 0 &&
		    strcmp(ia, "strip") != 0)
			conf_fail(
			    cx, conf_get(g, "infected_action"),
			    "infected_action '%s' is unknown (use \"quarantine\", \"discard\" "
			    "or \"strip\")",
			    ia);
		rt->banned_extensions = conf_strv(cx, g, "banned_extensions", 0);
		rt->banned_types = conf_strv(cx, g, "banned_types", 0);
		na = conf_str(cx, g, "notify_admin", 0);
		if (na && na[0] && envelope_addr_valid(na) < 0)
			conf_fail(cx, conf_get(g, "notify_admin"),
			          "notify_admin '%s' is not a valid address", na);
		nf = conf_str(cx, g, "notify_from", 0);
		if (nf && nf[0] && envelope_addr_valid(nf) < 0)
			conf_fail(cx, conf_get(g, "notify_from"),
			          "notify_from '%s' is not a valid address", nf);
		if (rt->hold_retry_max < rt->hold_retry_min)
			conf_fail(cx, conf_get(g, "hold_retry_max"),
			          "hold_retry_max must not be less than hold_retry_min");
	}

	rt->hold_expiry_action = xstrdup(hea ? hea : "quarantine");
	rt->infected_action = xstrdup(ia ? ia : "quarantine");
	rt->notify_admin = xstrdup(na ? na : "");
	rt->notify_from = xstrdup(nf ? nf : "");
	/* Safe defaults: executables and scripts Windows runs on a double-click, the set
	 * amavisd-new's $banned_filename_re and MailScanner's filename.rules agree on. */
	if (rt->banned_extensions == NULL) {
		static const char *const def_ext[] = {"exe", "scr", "pif", "bat", "cmd", "com",
		                                      "cpl", "js",  "jse", "vbs", "vbe", "wsf",
		                                      "wsh", "hta", "msi", "msp", "lnk", "reg",
		                                      "ps1", "jar", "chm", "inf", NULL};
		rt->banned_extensions = xcalloc(ARRAY_LEN(def_ext), sizeof(char *));
		for (size_t i = 0; def_ext[i]; i++)
			rt->banned_extensions[i] = xstrdup(def_ext[i]);
	}
	for (char **e = rt->banned_extensions; *e; e++) {
		if ((*e)[0] == '.')
			memmove(*e, *e + 1, strlen(*e));
		for (char *q = *e; *q; q++)
			*q = (char)tolower((unsigned char)*q);
	}
	if (rt->banned_types == NULL) {
		static const char *const def_types[] = {
		    "application/x-msdownload", "application/x-msdos-program",
		    "application/x-dosexec",    "application/x-ms-shortcut",
		    "application/hta",          NULL};
		rt->banned_types = xcalloc(ARRAY_LEN(def_types), sizeof(char *));
		for (size_t i = 0; def_types[i]; i++)
			rt->banned_types[i] = xstrdup(def_types[i]);
	}

	g = conf_get(root, "scanners");
	if (g == NULL) {
		conf_fail(cx, root,
		          "no 'scanners' list: mail cannot be passed unscanned; configure "
		          "at least one scanner");
	} else if (!config_setting_is_list(g)) {
		conf_fail(cx, g, "'scanners' must be a list of groups: scanners = ( { ... } );");
	} else {
		int n = config_setting_length(g);
		if (n == 0)
			conf_fail(cx, g, "'scanners' is empty: configure at least one scanner");
		c->scanners = xcalloc((size_t)n, sizeof *c->scanners);
		for (int i = 0; i < n; i++) {
			conf_scanner_parse(cx, config_setting_get_elem(g, (unsigned)i),
			                   &c->scanners[i]);
			c->n_scanners++;
			for (int j = 0; j < i; j++)
				if (strcmp(c->scanners[j].name, c->scanners[i].name) == 0)
					conf_fail(cx, config_setting_get_elem(g, (unsigned)i),
					          "scanner name '%s' is used twice",
					          c->scanners[i].name);
		}
		int primaries = 0;
		for (size_t i = 0; i < c->n_scanners; i++)
			primaries += !c->scanners[i].backup;
		if (n > 0 && primaries == 0)
			conf_fail(cx, g,
			          "every scanner is a backup; at least one must be primary "
			          "(backup = false)");
	}

	g = conf_get(root, "connectors");
	if (g == NULL) {
		conf_fail(cx, root,
		          "no 'connectors' list: add connectors = ( { name = \"smtp\"; "
		          "domains = [ \"*\" ]; } );");
	} else if (!config_setting_is_list(g)) {
		conf_fail(cx, g,
		          "'connectors' must be a list of groups: connectors = ( { ... } );");
	} else {
		int n = config_setting_length(g);
		c->connectors = xcalloc((size_t)n + 1, sizeof *c->connectors);
		for (int i = 0; i < n; i++) {
			config_setting_t *e = config_setting_get_elem(g, (unsigned)i);
			struct conf_connector *cn = &c->connectors[c->n_connectors++];
			cn->line = config_setting_source_line(e);
			if (!config_setting_is_group(e)) {
				conf_fail(cx, e,
				          "each connector must be a group: { name = \"...\"; }");
				cn->name = xstrdup("?");
				continue;
			}
			conf_check_keys(cx, e, "a connector", conn_keys);
			const char *nm = conf_str(cx, e, "name", 1);
			cn->name = xstrdup(nm ? nm : "?");
			if (nm && !conf_name_safe(nm))
				conf_fail(
				    cx, conf_get(e, "name"),
				    "connector name '%s' may only use letters, digits, '-' and '_' "
				    "(it names a directory)",
				    nm);
			cn->domains = conf_strv(cx, e, "domains", 0);
			cn->timeout = 300;
			cn->retry_min = 60;
			cn->retry_max = 3600;
			cn->max_age = 5 * 86400;
			conf_int(cx, e, "timeout", &cn->timeout, 1, 3600);
			conf_int(cx, e, "retry_min", &cn->retry_min, 1, 86400);
			conf_int(cx, e, "retry_max", &cn->retry_max, 1, 30 * 86400);
			conf_int(cx, e, "max_age", &cn->max_age, 1, 365 * 86400);
			const char *ty = conf_str(cx, e, "type", 0);
			const char *relay = conf_str(cx, e, "relay", 0);
			const char *helo = conf_str(cx, e, "helo", 0);
			const char *md = conf_str(cx, e, "maildir", 0);
			cn->relay = xstrdup(relay ? relay : "");
			cn->helo = xstrdup(helo ? helo : "localhost");
			const char *us = conf_str(cx, e, "unix_socket", 0);
			cn->unix_socket = us ? conf_path_resolve(cx, us) : xstrdup("");
			cn->maildir = md ? conf_path_resolve(cx, md) : xstrdup("");
			if (ty == NULL || strcmp(ty, "none") == 0) {
				cn->type = CONN_NONE;
			} else if (strcmp(ty, "smtp") == 0) {
				cn->type = CONN_SMTP;
				if (strncmp(cn->relay, "smtp://", 7) != 0)
					conf_fail(cx, relay ? conf_get(e, "relay") : e,
					          "connector '%s': an smtp connector needs relay = "
					          "\"smtp://HOST:PORT\";",
					          cn->name);
			} else if (strcmp(ty, "maildir") == 0) {
				cn->type = CONN_MAILDIR;
				if (!md)
					conf_fail(cx, e,
					          "connector '%s': a maildir connector needs "
					          "maildir = \"/path/to/Maildir\";",
					          cn->name);
			} else {
				conf_fail(
				    cx, conf_get(e, "type"),
				    "connector type '%s' is unknown (use \"none\", \"smtp\" or "
				    "\"maildir\")",
				    ty);
			}
			if (cn->domains == NULL)
				cn->domains = xcalloc(1, sizeof(char *));
			for (int j = 0; j < i; j++)
				if (strcmp(c->connectors[j].name, cn->name) == 0)
					conf_fail(cx, e, "connector name '%s' is used twice",
					          cn->name);
		}
		if (n == 0)
			conf_fail(cx, g, "'connectors' is empty: configure at least one connector");
	}
	if (c->n_connectors > 0) {
		rt->default_connector = xstrdup(dc ? dc : c->connectors[0].name);
		if (conf_connector_find(c, rt->default_connector) == NULL)
			conf_fail(cx, conf_get(conf_get(root, "router"), "default_connector"),
			          "default_connector '%s' is not a configured connector",
			          rt->default_connector);
	}
}

struct conf *conf_try_load(const char *path, char *err, size_t errlen)
{
	config_t cfg;
	struct conf_ctx cx = {.file = path, .err = err, .errlen = errlen};
	struct conf *c = xcalloc(1, sizeof *c);
	c->path = xstrdup(path);
	if (access(path, R_OK) < 0) {
		snprintf(err, errlen,
		         "%s:0: cannot read the config file: %s (give one with -c FILE; "
		         "conf/spoold.conf is a documented example)",
		         path, strerror(errno));
		conf_free(c);
		return NULL;
	}
	char *copy = xstrdup(path);
	char *slash = strrchr(copy, '/');
	char real[PATH_MAX];
	if (slash)
		*slash = '\0';
	if (realpath(slash ? (copy[0] ? copy : "/") : ".", real) == NULL) {
		snprintf(err, errlen, "%s:0: cannot resolve its directory: %s", path,
		         strerror(errno));
		free(copy);
		conf_free(c);
		return NULL;
	}
	free(copy);
	cx.confdir = xstrdup(real);
	config_init(&cfg);
	if (config_read_file(&cfg, path) != CONFIG_TRUE) {
		if (config_error_type(&cfg) == CONFIG_ERR_FILE_IO)
			snprintf(err, errlen, "%s:0: cannot read the config file: %s", path,
			         strerror(errno));
		else
			snprintf(err, errlen,
			         "%s:%d: %s (a syntax error: check the line and the one "
			         "before it for a missing ';' or quote)",
			         config_error_file(&cfg) ? config_error_file(&cfg) : path,
			         config_error_line(&cfg), config_error_text(&cfg));
		config_destroy(&cfg);
		free(cx.confdir);
		conf_free(c);
		return NULL;
	}
	conf_parse(&cx, &cfg, c);
	config_destroy(&cfg);
	free(cx.confdir);
	if (cx.failed) {
		conf_free(c);
		return NULL;
	}
	return c;
}

struct conf *conf_load(const char *path)
{
	char err[2048];
	struct conf *c = conf_try_load(path, err, sizeof err);
	if (c == NULL)
		die_perm(EXIT_CONFIG, "%s", err);
	log_configure(c->log_target, c->log_level);
	return c;
}

void conf_splitter_defaults(struct conf_splitter *sp)
{
	sp->instances = 1;
	sp->max_message_size = 100ull << 20;
	sp->max_parts = 1000;
	sp->max_depth = 30;
	sp->max_part_size = 100ull << 20;
	sp->max_total_size = 400ull << 20;
	/* The corpus's largest ratio of decoded bytes to message bytes is 2.4 (an embedded
	 * payload counts twice: in its text part and on its own); 8 leaves room for the
	 * other readings of ambiguous mail, and stops BinHex run-length coding (up to 96x)
	 * and nested encodings long before they fill a disk. */
	sp->max_expansion = 8;
	sp->scan_raw_message = 1;
	sp->poison_attempts = 3;
}

void conf_free(struct conf *c)
{
	if (c == NULL)
		return;
	free(c->path);
	free(c->spool_dir);
	free(c->user);
	for (int r = 0; r < ROLE__COUNT; r++)
		free(c->roles[r].name);
	free(c->control_group);
	free(c->scanner_user);
	free(c->metrics.file);
	free(c->metrics.group);
	free(c->lmtp.socket);
	free(c->lmtp.listen_tcp);
	free(c->fleet.node);
	free(c->fleet.conninfo);
	free(c->fleet.admin_conninfo);
	free(c->fleet.service_file);
	for (size_t i = 0; i < c->n_scanners; i++)
		conf_scanner_free(&c->scanners[i]);
	free(c->scanners);
	for (size_t i = 0; i < c->n_connectors; i++) {
		free(c->connectors[i].name);
		strv_free(c->connectors[i].domains);
		free(c->connectors[i].relay);
		free(c->connectors[i].helo);
		free(c->connectors[i].unix_socket);
		free(c->connectors[i].maildir);
	}
	free(c->connectors);
	free(c->router.default_connector);
	free(c->router.hold_expiry_action);
	free(c->router.infected_action);
	free(c->router.notify_admin);
	free(c->router.notify_from);
	strv_free(c->router.banned_extensions);
	strv_free(c->router.banned_types);
	free(c);
}

const struct conf_connector *conf_connector_find(const struct conf *c, const char *name)
{
	for (size_t i = 0; i < c->n_connectors; i++)
		if (strcmp(c->connectors[i].name, name) == 0)
			return &c->connectors[i];
	return NULL;
}
