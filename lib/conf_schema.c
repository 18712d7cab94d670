/*
 * conf_schema - the configuration table (see conf_schema.h) and the checks of what
 * depends on more than one key. Defaults live in the rows, and only there: the example
 * conf/spoold.conf and spoold.conf(5) repeat them for the reader, tests/t_docs.py checks
 * that both name every row.
 */
#include "conf_schema.h"

#include <ctype.h>
#include <errno.h>
#include <pwd.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "envelope.h"
#include "pool.h"
#include "spool.h"
#include "util.h"

#define DAY 86400

/* ---- the enums: the names as the file spells them, in the order of the C enum ----- */

static const char *const conf_names_log_target[] = {
    [LOG_TO_STDERR] = "stderr", [LOG_TO_SYSLOG] = "syslog", NULL};
static const char *const conf_names_spool_sync[] = {
    [SPOOL_SYNC_SYNCFS] = "syncfs", [SPOOL_SYNC_FILES] = "files", [SPOOL_SYNC_AUTO] = "auto", NULL};
static const char *const conf_names_log_level[] = {[LOG_LVL_DEBUG] = "debug",
                                                   [LOG_LVL_INFO] = "info",
                                                   [LOG_LVL_WARN] = "warning",
                                                   [LOG_LVL_ERROR] = "error",
                                                   NULL};
static const char *const conf_names_infected[] = {[INFECTED_QUARANTINE] = "quarantine",
                                                  [INFECTED_DISCARD] = "discard",
                                                  [INFECTED_STRIP] = "strip",
                                                  NULL};
static const char *const conf_names_hold_expiry[] = {
    [HOLD_EXPIRY_QUARANTINE] = "quarantine", [HOLD_EXPIRY_DELIVER] = "deliver", NULL};
static const char *const conf_names_scanner_type[] = {
    [SCANNER_EXEC] = "exec", [SCANNER_CLAMD] = "clamd", NULL};
static const char *const conf_names_scanner_mode[] = {[MODE_PER_ATTACHMENT] = "per-attachment",
                                                      [MODE_PER_MESSAGE] = "per-message",
                                                      [MODE_CLAMD] = "clamd",
                                                      NULL};
static const char *const conf_names_balance[] = {[POOL_FAILOVER] = "failover",
                                                 [POOL_ROUND_ROBIN] = "round-robin",
                                                 [POOL_LEAST_BUSY] = "least-busy",
                                                 NULL};
static const char *const conf_names_connector_type[] = {
    [CONN_NONE] = "none", [CONN_SMTP] = "smtp", [CONN_MAILDIR] = "maildir", NULL};

const char *conf_infected_action_name(enum infected_action a)
{
	return conf_enum_name(conf_names_infected, (int)a, "infected_action");
}

const char *conf_hold_expiry_action_name(enum hold_expiry_action a)
{
	return conf_enum_name(conf_names_hold_expiry, (int)a, "hold_expiry_action");
}

/* Safe defaults: executables and scripts Windows runs on a double-click, the set
 * amavisd-new's $banned_filename_re and MailScanner's filename.rules agree on. */
static const char *const conf_def_banned_ext[] = {
    "exe", "scr", "pif", "bat", "cmd", "com", "cpl", "js",  "jse", "vbs", "vbe", "wsf",
    "wsh", "hta", "msi", "msp", "lnk", "reg", "ps1", "jar", "chm", "inf", NULL};
static const char *const conf_def_banned_types[] = {
    "application/x-msdownload", "application/x-msdos-program",
    "application/x-dosexec",    "application/x-ms-shortcut",
    "application/hta",          NULL};
static const char *const conf_def_empty[] = {NULL};

/* ---- the rows ------------------------------------------------------------------------ */

/* One row per key: K_TYPE(key, field, then what the type needs: bounds, default, names),
 * and after them, when needed, .stages (the group's otherwise), .label or .flags. */
#define K_ROW(k, t, f, ...)                                                                        \
	{                                                                                          \
		.key = k, .type = t, .off = f, __VA_ARGS__                                         \
	}
#define K_BOOL(k, f, d, ...)        K_ROW(k, CT_BOOL, f, .def = d, __VA_ARGS__)
#define K_INT(k, f, lo, hi, d, ...) K_ROW(k, CT_INT, f, .min = lo, .max = hi, .def = d, __VA_ARGS__)
#define K_SECS(k, f, lo, hi, d, ...)                                                               \
	K_ROW(k, CT_SECONDS, f, .min = lo, .max = hi, .def = d, __VA_ARGS__)
#define K_COUNT(k, f, lo, d, ...) K_ROW(k, CT_COUNT, f, .min = lo, .def = d, __VA_ARGS__)
#define K_SIZE(k, f, lo, d, ...)  K_ROW(k, CT_SIZE, f, .min = lo, .def = d, __VA_ARGS__)
#define K_STR(k, f, d, ...)       K_ROW(k, CT_STRING, f, .def_str = d, __VA_ARGS__)
#define K_PATH(k, f, d, ...)      K_ROW(k, CT_PATH, f, .def_str = d, __VA_ARGS__)
#define K_USER(k, f, d, ...)      K_ROW(k, CT_USER, f, .def_str = d, __VA_ARGS__)
#define K_ENUM(k, f, d, n, ...)   K_ROW(k, CT_ENUM, f, .def = d, .names = n, __VA_ARGS__)
#define K_MODE(k, f, d, ...)      K_ROW(k, CT_MODE, f, .def = d, __VA_ARGS__)
#define K_STRV(k, f, d, ...)      K_ROW(k, CT_STRV, f, .def_strv = d, __VA_ARGS__)
#define K_CODES(k, f, fn, ...)    K_ROW(k, CT_CODES, f, .off_n = fn, __VA_ARGS__)

#define TOP(f) offsetof(struct conf, f)
static const struct conf_row conf_rows_top[] = {
    K_PATH("spool_dir", TOP(spool_dir), NULL, .flags = CF_REQUIRED),
    K_SECS("rescan_interval", TOP(rescan_interval), 1, 3600, 30),
    /* lib/spool_sync.c; docs/INTERNALS.md "Durability" says why auto */
    K_ENUM("spool_sync", TOP(spool_sync), SPOOL_SYNC_AUTO, conf_names_spool_sync),
    K_USER("user", TOP(user), ""),
    K_BOOL("allow_root", TOP(allow_root), 0), /* lib/user.c user_root_check */
    K_USER("splitter_user", TOP(roles[ROLE_SPLITTER].name), ""),
    K_USER("runner_user", TOP(roles[ROLE_RUNNER].name), ""),
    K_USER("router_user", TOP(roles[ROLE_ROUTER].name), ""),
    K_USER("connector_user", TOP(roles[ROLE_CONNECTOR].name), ""),
    /* lib/broker.h, spoold/broker.c: the user the exec scanners run as */
    K_USER("scanner_user", TOP(scanner_user), ""),
    /* applied by spoold, as root, at start */
    K_STR("control_group", TOP(control_group), "", .stages = CONF_ST_SPOOLD),
    K_SECS("canary_interval", TOP(canary_interval), 0, DAY, 300, .stages = CONF_ST_RUNNER),
};

static const struct conf_row conf_rows_log[] = {
    K_ENUM("target", TOP(log_target), LOG_TO_STDERR, conf_names_log_target, .label = "log target"),
    K_ENUM("level", TOP(log_level), LOG_LVL_INFO, conf_names_log_level, .label = "log level"),
};

#define MET(f) offsetof(struct conf_metrics, f)
static const struct conf_row conf_rows_metrics[] = {
    K_PATH("file", MET(file), NULL), /* unset: SPOOL/run/metrics.prom; "" off */
    K_SECS("interval", MET(interval), 1, 3600, 15),
    K_STR("group", MET(group), ""),
};

/* The fleet (docs/FLEET.md): every stage writes event records when the group is there. */
#define FL(f) offsetof(struct conf_fleet, f)
static const struct conf_row conf_rows_fleet[] = {
    K_STR("node", FL(node), ""),
    K_STR("conninfo", FL(conninfo), ""),
    K_STR("admin_conninfo", FL(admin_conninfo), ""),
    K_PATH("service_file", FL(service_file), ""),
    K_INT("batch", FL(batch), 1, 10000, 500),
    K_INT("max_backlog", FL(max_backlog), 1, 100000000, 100000),
    K_SECS("poll", FL(poll), 1, 3600, 5),
    K_INT("retention_days", FL(retention_days), 0, 36500, 90),
};

#define SPL(f) offsetof(struct conf_splitter, f)
static const struct conf_row conf_rows_splitter[] = {
    K_INT("instances", SPL(instances), 0, 64, 1),
    /* lmtpd's default SIZE too */
    K_SIZE("max_message_size", SPL(max_message_size), 1, 100ll << 20,
           .stages = CONF_ST_SPLITTER | CONF_ST_LMTPD),
    K_COUNT("max_parts", SPL(max_parts), 1, 1000),
    K_COUNT("max_depth", SPL(max_depth), 1, 30),
    K_SIZE("max_part_size", SPL(max_part_size), 1, 100ll << 20),
    K_SIZE("max_total_size", SPL(max_total_size), 1, 400ll << 20),
    /* The corpus's largest ratio of decoded bytes to message bytes is 2.4 (an embedded
     * payload counts twice: in its text part and on its own); 8 leaves room for the
     * other readings of ambiguous mail, and stops BinHex run-length coding (up to 96x)
     * and nested encodings long before they fill a disk. */
    K_COUNT("max_expansion", SPL(max_expansion), 1, 8),
    K_BOOL("scan_raw_message", SPL(scan_raw_message), 1),
    K_INT("poison_attempts", SPL(poison_attempts), 1, 100, 3),
};

#define LMTP(f) offsetof(struct conf_lmtp, f)
static const struct conf_row conf_rows_lmtp[] = {
    K_BOOL("enabled", LMTP(enabled), 0),
    K_PATH("socket", LMTP(socket), NULL), /* unset or "": SPOOL/run/lmtp */
    K_MODE("socket_mode", LMTP(socket_mode), 0660),
    K_STR("listen_tcp", LMTP(listen_tcp), ""),
    K_INT("max_connections", LMTP(max_connections), 1, 10000, 50),
    K_INT("max_recipients", LMTP(max_recipients), 1, ENV_RCPT_MAX, 1000),
    /* 0 (unset): splitter.max_message_size */
    K_SIZE("max_message_size", LMTP(max_message_size), 1, 0),
    K_SECS("timeout", LMTP(timeout), 1, 3600, 300),
};

#define RUN(f) offsetof(struct conf_runner, f)
static const struct conf_row conf_rows_runner[] = {
    K_INT("instances", RUN(instances), 0, 64, 1),
    K_SECS("max_message_scan_time", RUN(max_message_scan_time), 0, DAY, 600),
    K_INT("max_message_scan_runs", RUN(max_message_scan_runs), 0, 1000000, 0),
    K_SECS("slot_wait", RUN(slot_wait), 1, DAY, 300),
};

#define RT(f) offsetof(struct conf_router, f)
static const struct conf_row conf_rows_router[] = {
    K_INT("instances", RT(instances), 0, 64, 1),
    K_STR("default_connector", RT(default_connector), NULL), /* unset: the first one */
    K_SECS("hold_retry_min", RT(hold_retry_min), 1, DAY, 60),
    K_SECS("hold_retry_max", RT(hold_retry_max), 1, 30 * DAY, 3600),
    K_SECS("max_hold_time", RT(max_hold_time), 1, 365 * DAY, 5 * DAY),
    K_ENUM("hold_expiry_action", RT(hold_expiry_action), HOLD_EXPIRY_QUARANTINE,
           conf_names_hold_expiry),
    K_INT("quarantine_days", RT(quarantine_days), 0, 3650, 30),
    K_SECS("expire_interval", RT(expire_interval), 1, DAY, 3600),
    K_BOOL("add_scanned_header", RT(add_scanned_header), 1),
    K_ENUM("infected_action", RT(infected_action), INFECTED_QUARANTINE, conf_names_infected),
    K_STRV("banned_extensions", RT(banned_extensions), conf_def_banned_ext),
    K_STRV("banned_types", RT(banned_types), conf_def_banned_types),
    K_STR("notify_admin", RT(notify_admin), ""),
    K_BOOL("notify_recipients", RT(notify_recipients), 0),
    K_STR("notify_from", RT(notify_from), ""),
};

#define SC(f) offsetof(struct conf_scanner, f)
static const struct conf_row conf_rows_scanner[] = {
    K_STR("name", SC(name), NULL, .flags = CF_REQUIRED),
    K_ENUM("type", SC(type), SCANNER_EXEC, conf_names_scanner_type),
    /* clamd: always "clamd" (conf_scanner_check) */
    K_ENUM("mode", SC(mode), MODE_PER_ATTACHMENT, conf_names_scanner_mode),
    K_STRV("argv", SC(argv), NULL),
    K_CODES("clean_codes", SC(clean_codes), SC(n_clean)),
    K_CODES("infected_codes", SC(infected_codes), SC(n_infected)),
    K_STR("virus_regex", SC(virus_regex), NULL),
    K_STRV("version_argv", SC(version_argv), NULL),
    K_STRV("addresses", SC(clamd_addrs), NULL),
    K_ENUM("balance", SC(balance), POOL_FAILOVER, conf_names_balance),
    K_SECS("down_min", SC(down_min), 1, DAY, 2),
    K_SECS("down_max", SC(down_max), 1, DAY, 60),
    K_BOOL("cache", SC(cache), 1),
    K_SIZE("cache_size", SC(cache_size), 1 << 20, 64 << 20),
    K_USER("peer_user", SC(peer_user), NULL),
    /* At most clamd's own MaxFileSize and MaxScanSize (100M/400M in ClamAV 1.x, 25M/100M
     * before): a part clamd would only partly scan must be unscannable here. */
    K_SIZE("max_file_size", SC(max_file_size), 1, 25 << 20),
    K_SIZE("stream_max_length", SC(stream_max_length), 1, 25 << 20),
    K_SECS("timeout", SC(timeout), 1, DAY, 60),
    K_INT("max_concurrent", SC(max_concurrent), 1, 1024, 2),
    K_BOOL("backup", SC(backup), 0),
    K_BOOL("canary", SC(canary), 1),
    K_PATH("workdir", SC(workdir), NULL),
    K_SIZE("rlimit_as", SC(rlimit_as), 0, 0),
    K_COUNT("rlimit_cpu", SC(rlimit_cpu), 0, 0),
    K_COUNT("rlimit_nofile", SC(rlimit_nofile), 16, 256),
};

#define CN(f) offsetof(struct conf_connector, f)
static const struct conf_row conf_rows_connector[] = {
    K_STR("name", CN(name), NULL, .flags = CF_REQUIRED),
    K_STRV("domains", CN(domains), conf_def_empty),
    K_ENUM("type", CN(type), CONN_NONE, conf_names_connector_type, .label = "connector type"),
    K_STR("relay", CN(relay), ""),
    K_STR("helo", CN(helo), "localhost"),
    K_PATH("unix_socket", CN(unix_socket), ""),
    K_PATH("maildir", CN(maildir), ""),
    K_SECS("timeout", CN(timeout), 1, 3600, 300),
    K_SECS("retry_min", CN(retry_min), 1, DAY, 60),
    K_SECS("retry_max", CN(retry_max), 1, 30 * DAY, 3600),
    K_SECS("max_age", CN(max_age), 1, 365 * DAY, 5 * DAY),
};

/* ---- the checks of what one row cannot say ------------------------------------------ */

/* A name that becomes a file or directory name: letters, digits, '-' and '_'. */
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

/* Names to ids once, at load: a missing user is a config error with its line, not a
 * surprise at the first restart. A role without a user of its own runs as the spool's. */
static void conf_roles_resolve(struct conf_ctx *cx, const config_setting_t *root, struct conf *c)
{
	c->roles[ROLE_SPOOL].name = xstrdup(c->user ? c->user : "");
	for (int r = 0; r < ROLE__COUNT; r++) {
		struct conf_role_user *ru = &c->roles[r];
		const char *key = conf_role_name((enum conf_role)r);
		ru->uid = (uid_t)-1;
		ru->gid = (gid_t)-1;
		if (ru->name == NULL || ru->name[0] == '\0') {
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
			    cx, conf_get(root, key),
			    "%s '%s' is not a user on this system (dist/spoold.sysusers makes "
			    "the bundled ones)",
			    key, ru->name);
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

static void conf_top_check(struct conf_ctx *cx, const config_setting_t *s, void *obj,
                           struct conf *c)
{
	(void)obj;
	if (c->spool_dir == NULL) /* missing: already an error */
		c->spool_dir = xstrdup("");
	else if (c->spool_dir[0] == '\0')
		conf_fail(cx, conf_get(s, "spool_dir"), "spool_dir must not be empty");
	conf_roles_resolve(cx, s, c);
}

static void conf_metrics_check(struct conf_ctx *cx, const config_setting_t *s, void *obj,
                               struct conf *c)
{
	struct conf_metrics *m = obj;
	(void)cx;
	(void)s;
	if (m->file == NULL)
		m->file = xasprintf("%s/run/metrics.prom", c->spool_dir);
}

/* Credentials never live here: a conninfo names a service or a passfile, which only
 * spoold's user can read; a password in this file, which every stage reads, is refused. */
static void conf_fleet_check(struct conf_ctx *cx, const config_setting_t *s, void *obj,
                             struct conf *c)
{
	struct conf_fleet *f = obj;
	(void)c;
	f->enabled = s != NULL;
	if (s == NULL)
		return;
	if (conf_get(s, "node") && !conf_name_safe(f->node))
		conf_fail(cx, conf_get(s, "node"),
		          "fleet node '%s' must be 1-64 letters, digits, '-' or '_'", f->node);
	const char *const k[] = {"conninfo", "admin_conninfo"};
	const char *const v[] = {f->conninfo, f->admin_conninfo};
	for (int i = 0; i < 2; i++)
		if (v[i] && strstr(v[i], "password"))
			conf_fail(cx, conf_get(s, k[i]),
			          "fleet %s must not hold a password: name a passfile or a service "
			          "(service_file) that only spoold's user can read",
			          k[i]);
}

static void conf_lmtp_check(struct conf_ctx *cx, const config_setting_t *s, void *obj,
                            struct conf *c)
{
	struct conf_lmtp *l = obj;
	if (l->socket == NULL || l->socket[0] == '\0') {
		free(l->socket);
		l->socket = xasprintf("%s/run/lmtp", c->spool_dir);
	}
	if (l->max_message_size == 0)
		l->max_message_size = c->splitter.max_message_size;
	/* TCP only on loopback: the intake trusts whoever connects as much as whoever can
	 * write into inbound/, so it must never face the network. */
	const char *tcp = l->listen_tcp;
	if (tcp[0] && strncmp(tcp, "127.0.0.1:", 10) != 0 && strncmp(tcp, "[::1]:", 6) != 0)
		conf_fail(cx, conf_get(s, "listen_tcp"),
		          "listen_tcp '%s' must be \"127.0.0.1:PORT\" or \"[::1]:PORT\" (loopback "
		          "only; \"\" turns TCP off)",
		          tcp);
}

static void conf_router_check(struct conf_ctx *cx, const config_setting_t *s, void *obj,
                              struct conf *c)
{
	struct conf_router *rt = obj;
	(void)c;
	if (rt->notify_admin[0] && envelope_addr_valid(rt->notify_admin) < 0)
		conf_fail(cx, conf_get(s, "notify_admin"),
		          "notify_admin '%s' is not a valid address", rt->notify_admin);
	if (rt->notify_from[0] && envelope_addr_valid(rt->notify_from) < 0)
		conf_fail(cx, conf_get(s, "notify_from"), "notify_from '%s' is not a valid address",
		          rt->notify_from);
	if (rt->hold_retry_max < rt->hold_retry_min)
		conf_fail(cx, conf_get(s, "hold_retry_max"),
		          "hold_retry_max must not be less than hold_retry_min");
	/* Compared with a decoded file name's last extension: no dot, lower case. */
	for (char **e = rt->banned_extensions; e && *e; e++) {
		if ((*e)[0] == '.')
			memmove(*e, *e + 1, strlen(*e));
		for (char *q = *e; *q; q++)
			*q = (char)tolower((unsigned char)*q);
	}
}

/* A list every scanner of its kind needs (argv, addresses). */
static void conf_strv_required(struct conf_ctx *cx, const config_setting_t *s, const char *key,
                               char **v)
{
	if (v == NULL)
		conf_fail(cx, s, "missing '%s' (a list of strings: %s = [ \"...\" ];)", key, key);
	else if (v[0] == NULL)
		conf_fail(cx, conf_get(s, key), "'%s' must not be empty", key);
}

static int conf_argv_has(char **argv, const char *ph)
{
	for (char **p = argv; p && *p; p++)
		if (strstr(*p, ph))
			return 1;
	return 0;
}

/* A relative program name is taken from the config's directory, as every path is. */
static void conf_argv0_resolve(struct conf_ctx *cx, char **argv)
{
	if (argv && argv[0] && argv[0][0] != '/') {
		char *abs = conf_path_resolve(cx, argv[0]);
		free(argv[0]);
		argv[0] = abs;
	}
}

/*
 * peer_user: who a clamd behind a unix socket must run as (SO_PEERCRED). A user name or a
 * numeric uid. Unset: root, "clamav" if that user exists, and (added by clamd.c) the
 * runner's own uid. Names are resolved here, once, so that a missing user is a config
 * error with its line, not a hold of every message.
 */
static void conf_clamd_peer(struct conf_ctx *cx, const config_setting_t *s, struct conf_scanner *sc)
{
	const char *u = sc->peer_user;
	struct passwd *pw;
	uint64_t uid;

	sc->n_clamd_peer_uids = 0;
	sc->clamd_peer_default = u == NULL;
	if (u == NULL) {
		sc->clamd_peer_uids[sc->n_clamd_peer_uids++] = 0;
		pw = getpwnam("clamav");
		if (pw != NULL && pw->pw_uid != 0)
			sc->clamd_peer_uids[sc->n_clamd_peer_uids++] = pw->pw_uid;
		return;
	}
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

static void conf_clamd_check(struct conf_ctx *cx, const config_setting_t *s,
                             struct conf_scanner *sc)
{
	if (sc->down_max < sc->down_min)
		conf_fail(cx, conf_get(s, "down_max"),
		          "scanner '%s': down_max (%d) is less than down_min (%d)", sc->name,
		          sc->down_max, sc->down_min);
	conf_clamd_peer(cx, s, sc);
	conf_strv_required(cx, s, "addresses", sc->clamd_addrs);
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
			          "clamd address '%s' must be \"unix:/path\" or \"tcp:HOST:PORT\"",
			          *a);
		}
	}
}

/* Exit codes and the virus name regex of an exec scanner. */
static void conf_exec_output_check(struct conf_ctx *cx, const config_setting_t *s,
                                   struct conf_scanner *sc)
{
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
	if (sc->virus_regex == NULL) {
		if (sc->mode == MODE_PER_MESSAGE)
			conf_fail(cx, s,
			          "scanner '%s': per-message mode needs virus_regex to tell which "
			          "file is infected, e.g. \"^(.+): (.+) FOUND$\"",
			          sc->name);
		return;
	}
	regex_t rx;
	int rc = regcomp(&rx, sc->virus_regex, REG_EXTENDED | REG_NEWLINE);
	if (rc != 0) {
		char msg[256];
		regerror(rc, &rx, msg, sizeof msg);
		conf_fail(cx, conf_get(s, "virus_regex"),
		          "scanner '%s': virus_regex is not a valid POSIX extended regex: %s",
		          sc->name, msg);
		return;
	}
	if (rx.re_nsub < 1)
		conf_fail(cx, conf_get(s, "virus_regex"),
		          "scanner '%s': virus_regex needs one capture group for the virus name, "
		          "e.g. \": (.+) FOUND$\"",
		          sc->name);
	regfree(&rx);
}

static void conf_exec_check(struct conf_ctx *cx, const config_setting_t *s, struct conf_scanner *sc)
{
	static const char *const clamd_only[] = {
	    "peer_user", "max_file_size", "balance", "down_min", "down_max", "cache", "cache_size"};
	for (size_t i = 0; i < ARRAY_LEN(clamd_only); i++)
		if (conf_get(s, clamd_only[i]) != NULL) {
			conf_fail(cx, s,
			          "scanner '%s': peer_user, max_file_size, balance, down_min, "
			          "down_max, cache and cache_size are for type \"clamd\" only",
			          sc->name);
			break;
		}
	conf_strv_required(cx, s, "argv", sc->argv);
	conf_argv0_resolve(cx, sc->argv);
	conf_argv0_resolve(cx, sc->version_argv);
	if (sc->argv && sc->argv[0]) {
		if (access(sc->argv[0], X_OK) < 0)
			conf_fail(cx, conf_get(s, "argv"),
			          "scanner '%s': %s: %s (install it, or fix argv[0])", sc->name,
			          sc->argv[0], strerror(errno));
		if (sc->mode == MODE_PER_ATTACHMENT && !conf_argv_has(sc->argv, "{file}"))
			conf_fail(
			    cx, conf_get(s, "argv"),
			    "scanner '%s': a per-attachment argv needs the {file} placeholder",
			    sc->name);
		if (sc->mode == MODE_PER_MESSAGE && !conf_argv_has(sc->argv, "{files}") &&
		    !conf_argv_has(sc->argv, "{dir}"))
			conf_fail(cx, conf_get(s, "argv"),
			          "scanner '%s': a per-message argv needs {files} or {dir}",
			          sc->name);
	}
	conf_exec_output_check(cx, s, sc);
}

static void conf_scanner_check(struct conf_ctx *cx, const config_setting_t *s, void *obj,
                               struct conf *c)
{
	struct conf_scanner *sc = obj;
	sc->line = s ? config_setting_source_line(s) : 0;
	if (sc->name == NULL)
		sc->name = xstrdup("?");
	if (s == NULL) /* not a group: already an error */
		return;
	if (conf_get(s, "name") && !conf_name_safe(sc->name))
		conf_fail(cx, conf_get(s, "name"),
		          "scanner name '%s' may only use letters, digits, '-' and '_'", sc->name);
	for (struct conf_scanner *o = c->scanners; o < sc; o++)
		if (strcmp(o->name, sc->name) == 0)
			conf_fail(cx, s, "scanner name '%s' is used twice", sc->name);
	const config_setting_t *mode = conf_get(s, "mode");
	if (sc->type == SCANNER_CLAMD) {
		if (mode && sc->mode != MODE_CLAMD)
			conf_fail(
			    cx, mode,
			    "a clamd scanner has no mode other than \"clamd\"; remove the mode "
			    "line");
		sc->mode = MODE_CLAMD;
		conf_clamd_check(cx, s, sc);
		return;
	}
	if (sc->mode == MODE_CLAMD)
		conf_fail(cx, mode,
		          "mode 'clamd' is unknown for an exec scanner (use \"per-attachment\" or "
		          "\"per-message\")");
	conf_exec_check(cx, s, sc);
}

static void conf_scanners_done(struct conf_ctx *cx, const config_setting_t *s, struct conf *c)
{
	if (c->n_scanners == 0) {
		conf_fail(cx, s, "'scanners' is empty: configure at least one scanner");
		return;
	}
	int primaries = 0;
	for (size_t i = 0; i < c->n_scanners; i++)
		primaries += !c->scanners[i].backup;
	if (primaries == 0)
		conf_fail(
		    cx, s,
		    "every scanner is a backup; at least one must be primary (backup = false)");
}

static void conf_connector_check(struct conf_ctx *cx, const config_setting_t *s, void *obj,
                                 struct conf *c)
{
	struct conf_connector *cn = obj;
	cn->line = s ? config_setting_source_line(s) : 0;
	if (cn->name == NULL)
		cn->name = xstrdup("?");
	if (s == NULL) /* not a group: already an error */
		return;
	if (conf_get(s, "name") && !conf_name_safe(cn->name))
		conf_fail(cx, conf_get(s, "name"),
		          "connector name '%s' may only use letters, digits, '-' and '_' (it names "
		          "a directory)",
		          cn->name);
	if (cn->type == CONN_SMTP && strncmp(cn->relay, "smtp://", 7) != 0)
		conf_fail(cx, conf_get(s, "relay") ? conf_get(s, "relay") : s,
		          "connector '%s': an smtp connector needs relay = \"smtp://HOST:PORT\";",
		          cn->name);
	if (cn->type == CONN_MAILDIR && cn->maildir[0] == '\0')
		conf_fail(cx, s,
		          "connector '%s': a maildir connector needs maildir = "
		          "\"/path/to/Maildir\";",
		          cn->name);
	for (struct conf_connector *o = c->connectors; o < cn; o++)
		if (strcmp(o->name, cn->name) == 0)
			conf_fail(cx, s, "connector name '%s' is used twice", cn->name);
}

/* After the connectors: the router's default connector must be one of them. */
static void conf_connectors_done(struct conf_ctx *cx, const config_setting_t *s, struct conf *c)
{
	if (c->n_connectors == 0) {
		conf_fail(cx, s, "'connectors' is empty: configure at least one connector");
		return;
	}
	struct conf_router *rt = &c->router;
	if (rt->default_connector == NULL)
		rt->default_connector = xstrdup(c->connectors[0].name);
	if (conf_connector_find(c, rt->default_connector) == NULL)
		conf_fail(
		    cx, conf_get(conf_get(config_setting_parent(s), "router"), "default_connector"),
		    "default_connector '%s' is not a configured connector", rt->default_connector);
}

/* ---- the groups, in the order of the walk ------------------------------------------- */

#define ROWS(a) .rows = a, .n_rows = ARRAY_LEN(a)
const struct conf_group conf_groups[] = {
    {.name = NULL,
     .kind = CG_TOP,
     ROWS(conf_rows_top),
     .stages = CONF_ST_ALL,
     .what = "the top level",
     .check = conf_top_check},
    /* log has no struct of its own: its rows are on struct conf. */
    {.name = "log",
     .kind = CG_GROUP,
     ROWS(conf_rows_log),
     .stages = CONF_ST_ALL,
     .off = 0,
     .what = "log"},
    {.name = "metrics",
     .kind = CG_GROUP,
     ROWS(conf_rows_metrics),
     .stages = CONF_ST_SPOOLD,
     .off = TOP(metrics),
     .what = "metrics",
     .check = conf_metrics_check},
    {.name = "fleet",
     .kind = CG_GROUP,
     ROWS(conf_rows_fleet),
     .stages = CONF_ST_ALL,
     .off = TOP(fleet),
     .what = "fleet",
     .check = conf_fleet_check},
    {.name = "splitter",
     .kind = CG_GROUP,
     ROWS(conf_rows_splitter),
     .stages = CONF_ST_SPLITTER,
     .off = TOP(splitter),
     .what = "splitter"},
    /* after splitter: its SIZE defaults to splitter.max_message_size */
    {.name = "lmtp",
     .kind = CG_GROUP,
     ROWS(conf_rows_lmtp),
     .stages = CONF_ST_LMTPD,
     .off = TOP(lmtp),
     .what = "lmtp",
     .check = conf_lmtp_check},
    {.name = "scanner_runner",
     .kind = CG_GROUP,
     ROWS(conf_rows_runner),
     .stages = CONF_ST_RUNNER,
     .off = TOP(runner),
     .what = "scanner_runner"},
    {.name = "router",
     .kind = CG_GROUP,
     ROWS(conf_rows_router),
     .stages = CONF_ST_ROUTER,
     .off = TOP(router),
     .what = "router",
     .check = conf_router_check},
    {.name = "scanners",
     .kind = CG_LIST,
     ROWS(conf_rows_scanner),
     .stages = CONF_ST_RUNNER | CONF_ST_ROUTER,
     .off = TOP(scanners),
     .off_n = TOP(n_scanners),
     .elem_size = sizeof(struct conf_scanner),
     .what = "a scanner",
     .missing = "no 'scanners' list: mail cannot be passed unscanned; configure at least one "
                "scanner",
     .not_group = "each scanner must be a group: { name = \"...\"; ... }",
     .check = conf_scanner_check,
     .done = conf_scanners_done},
    /* after router: the default connector is checked against these */
    {.name = "connectors",
     .kind = CG_LIST,
     ROWS(conf_rows_connector),
     .stages = CONF_ST_ROUTER | CONF_ST_CONNECTORS,
     .off = TOP(connectors),
     .off_n = TOP(n_connectors),
     .elem_size = sizeof(struct conf_connector),
     .what = "a connector",
     .missing = "no 'connectors' list: add connectors = ( { name = \"smtp\"; domains = [ \"*\" "
                "]; } );",
     .not_group = "each connector must be a group: { name = \"...\"; }",
     .check = conf_connector_check,
     .done = conf_connectors_done},
};
const size_t conf_n_groups = ARRAY_LEN(conf_groups);
