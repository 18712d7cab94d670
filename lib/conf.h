/*
 * conf - the one libconfig file that configures every program.
 *
 * conf_load() parses and validates the whole file. On any error it prints
 * "FILE:LINE: what is wrong (how to fix)" and exits EXIT_CONFIG; with conf_try_load()
 * the message is returned instead (spoold's SIGHUP keeps the old config). Unknown keys
 * are errors. Relative paths are resolved against the directory of the config file,
 * so the result does not depend on the working directory. Every key, its type, bounds,
 * default and readers are one row of the table in lib/conf_schema.c.
 *
 * DIAGNOSTICS
 *   conf_load dies 78 on a bad file; the enum name functions log_panic on a value that
 *   is not one of the enum's (an internal inconsistency).
 */
#ifndef SPOOLD_CONF_H
#define SPOOLD_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "log.h"

enum scanner_type { SCANNER_EXEC, SCANNER_CLAMD };
enum scanner_mode { MODE_PER_ATTACHMENT, MODE_PER_MESSAGE, MODE_CLAMD };

struct conf_scanner {
	char *name;
	enum scanner_type type;
	enum scanner_mode mode;
	char **argv; /* NULL-terminated; placeholders {file} {dir} {files} */
	int *clean_codes;
	size_t n_clean;
	int *infected_codes;
	size_t n_infected;
	char *virus_regex;   /* POSIX ERE, group 1 = virus name; may be NULL */
	char **version_argv; /* argv that prints the version, may be NULL */
	char **clamd_addrs;  /* "unix:/path" or "tcp:host:port", NULL-terminated */
	uint64_t stream_max_length;
	/* clamd: a larger part is unscannable, never sent. */
	uint64_t max_file_size;
	char *peer_user; /* clamd: as configured; NULL: unset */
	/* clamd: the uids a clamd behind a unix socket may run as (peer_user); with
	 * clamd_peer_default (no peer_user), clamd.c adds the runner's own uid. */
	uid_t clamd_peer_uids[2];
	size_t n_clamd_peer_uids;
	int clamd_peer_default;
	/* clamd pools (lib/pool.h): placement and the down back-off, in seconds. */
	int balance; /* enum pool_balance */
	int down_min;
	int down_max;
	/* clamd: the verdict cache (scanner-runner/cache.c), and its size in bytes. */
	int cache;
	uint64_t cache_size;
	int timeout;         /* seconds */
	int max_concurrent;  /* slots across all runner processes */
	int backup;          /* used only when every primary scanner failed */
	int canary;          /* run the canary self-test on it (default 1) */
	char *workdir;       /* cwd of the child; NULL: the message's work directory */
	uint64_t rlimit_as;  /* bytes, 0 = unlimited */
	uint64_t rlimit_cpu; /* seconds, 0 = unlimited */
	uint64_t rlimit_nofile;
	int line; /* line in the config file, for messages */
};

enum connector_type { CONN_NONE, CONN_SMTP, CONN_MAILDIR };

struct conf_connector {
	char *name;
	char **domains;           /* patterns: "example.org", "*.example.org", "*" */
	enum connector_type type; /* NONE: an outside agent drains the outbox */
	char *relay;              /* smtp: "smtp://host:port" */
	char *helo;               /* smtp: name to greet with */
	char *unix_socket;        /* smtp: connect here instead of relay's host ("" = TCP) */
	char *maildir;            /* maildir: absolute path of the Maildir */
	int timeout;              /* smtp: seconds per transaction */
	int retry_min;            /* seconds, first retry after a temporary failure */
	int retry_max;
	int max_age; /* seconds in the outbox before a bounce record */
	int line;
};

struct conf_splitter {
	int instances;
	uint64_t max_message_size;
	uint64_t max_parts;
	uint64_t max_depth;
	uint64_t max_part_size;
	uint64_t max_total_size;
	/* decoded bytes of all parts at most max_expansion x the message size + 1 MiB (and
	 * never over max_total_size): a decoder bomb stops at a small multiple of what was
	 * received, whatever the absolute cap */
	uint64_t max_expansion;
	int scan_raw_message;
	int poison_attempts;
};

struct conf_runner {
	int instances;
	int max_message_scan_time; /* seconds of scanning one message may use; 0: no bound */
	int max_message_scan_runs; /* scanner runs one message may use; 0: no bound */
	int slot_wait;             /* seconds to wait for a scanner slot; then an error */
};

/* What the router does with infected mail, and with mail held past max_hold_time. */
enum infected_action { INFECTED_QUARANTINE, INFECTED_DISCARD, INFECTED_STRIP };
enum hold_expiry_action { HOLD_EXPIRY_QUARANTINE, HOLD_EXPIRY_DELIVER };

struct conf_router {
	int instances;
	char *default_connector;
	int hold_retry_min; /* seconds */
	int hold_retry_max;
	int max_hold_time;
	enum hold_expiry_action hold_expiry_action; /* deliver: with a warning header */
	int quarantine_days;    /* quarantine entries older than this are expired; 0 keeps */
	int add_scanned_header; /* X-Virus-Scanned: on delivered mail (default true) */
	enum infected_action infected_action;
	char **banned_extensions; /* lower case, no dot; NULL-terminated, never NULL */
	char **banned_types;      /* fnmatch patterns on the content type; never NULL */
	char *notify_admin;       /* admin address for infected-mail notices; "" off */
	int notify_recipients;    /* notice to the recipients of quarantined mail */
	char *notify_from;        /* sender of the notices; "" is the null sender */
	int expire_interval;      /* seconds between quarantine expiry runs in the router */
};

/* The LMTP/SMTP intake (lmtpd), started by spoold when enabled. */
struct conf_lmtp {
	int enabled;
	char *socket;              /* absolute path of the Unix socket */
	int socket_mode;           /* its permission bits */
	char *listen_tcp;          /* "" off, else "127.0.0.1:PORT" or "[::1]:PORT" */
	int max_connections;       /* more are answered 421 */
	int max_recipients;        /* per message; more are answered 452 */
	uint64_t max_message_size; /* SIZE; unset: splitter.max_message_size */
	int timeout;               /* seconds a client may stay silent */
};

/* The fleet (docs/FLEET.md): event records in export/ and the exporter stage. Absent, the
 * node writes no records and runs no exporter: everything behaves as without it. */
struct conf_fleet {
	int enabled;    /* the fleet group is present */
	char *node;     /* this node's name in the database, [A-Za-z0-9_-]{1,64} */
	char *conninfo; /* libpq conninfo of the node's role; "" : no database (records wait) */
	char *admin_conninfo; /* spoolctl fleet's (the admin role); "" : conninfo */
	char *service_file;   /* PGSERVICEFILE for both, absolute; "" : libpq's default */
	int batch;            /* records per transaction */
	int max_backlog;      /* records export/ may hold; past it new ones are dropped */
	int poll;             /* seconds between polls for actions (besides NOTIFY) */
	int retention_days;   /* spoolctl fleet expire: rows older than this go; 0 keeps */
};

struct conf_metrics {
	char *file;   /* absolute; "" disables */
	int interval; /* seconds between rewrites */
	char *group;  /* "" : mode 0644; else mode 0640 with this group */
};

/* The roles that may run as users of their own (privilege separation, docs/SECURITY.md).
 * ROLE_SPOOL is the spool's own user (`user`): spoold, spoolctl, the admin. */
enum conf_role {
	ROLE_SPOOL,
	ROLE_SPLITTER, /* the splitter and the LMTP intake: they parse what senders send */
	ROLE_RUNNER,
	ROLE_ROUTER,
	ROLE_CONNECTOR,
	ROLE__COUNT
};

struct conf_role_user {
	char *name; /* "" : the spool's user (ROLE_SPOOL: "" keeps the invoking user) */
	uid_t uid;  /* (uid_t)-1 : whoever runs the program (no user configured) */
	gid_t gid;  /* its primary group, (gid_t)-1 likewise */
};

struct conf {
	char *path;          /* the config file as given */
	char *spool_dir;     /* absolute */
	char *user;          /* run as this user when started as root; "" keeps root */
	char *control_group; /* group allowed on the control socket; "" means 0600 */
	int allow_root;      /* root with user "" is refused unless this is set */
	/* Who each role runs as, resolved at load (an unknown user is a config error). */
	struct conf_role_user roles[ROLE__COUNT];
	int separated; /* some role runs as a user other than the spool's */
	/* scanner_user: exec scanners run as this user through the broker (lib/broker.h)
	 * when spoold starts as root; "" runs them as the runner's own uid. */
	char *scanner_user;
	int canary_interval; /* seconds between scanner canary checks; 0 disables */
	struct conf_metrics metrics;
	enum log_target log_target;
	enum log_level log_level;
	int rescan_interval; /* seconds between full directory scans */
	/* how a stage makes its step durable (lib/spool.h); syncfs whenever fleet is on */
	int spool_sync; /* enum spool_sync_mode */
	struct conf_splitter splitter;
	struct conf_runner runner;
	struct conf_router router;
	struct conf_lmtp lmtp;
	struct conf_fleet fleet;
	struct conf_scanner *scanners;
	size_t n_scanners;
	struct conf_connector *connectors;
	size_t n_connectors;
};

/* Load or exit EXIT_CONFIG with "file:line: message". Also applies the log settings. */
struct conf *conf_load(const char *path);
/* Load; on error return NULL and put "file:line: message" into err. */
struct conf *conf_try_load(const char *path, char *err, size_t errlen);
/* The splitter's defaults, the values of every key the config leaves out. */
void conf_splitter_defaults(struct conf_splitter *sp);
void conf_free(struct conf *c);
const struct conf_connector *conf_connector_find(const struct conf *c, const char *name);
/* The canonical text of the settings the stage named reads ("splitter",
 * "scanner-runner", "router", "connectors", "lmtpd"), or with NULL, of the settings every
 * stage reads: spoold restarts on SIGHUP the stages whose text changed. Malloc'd. An
 * unknown stage name is an internal inconsistency (log_panic). */
char *conf_stage_signature(const struct conf *c, const char *stage);
/* The configured names of the enum values, as the file spells them. */
const char *conf_infected_action_name(enum infected_action a);
const char *conf_hold_expiry_action_name(enum hold_expiry_action a);
/* The uid a file written by role r must belong to, for a reader that acts on it (trust by
 * ownership, docs/SECURITY.md): the role's configured user (else the spool's user) when
 * the caller itself runs as one of the configured users; otherwise nothing was switched
 * (started as a plain user, or as root with allow_root) and every program runs as the
 * caller's own uid. */
uid_t conf_role_uid(const struct conf *c, enum conf_role r);
/* The role of a stage program by its name ("splitter", "lmtpd", "scanner-runner",
 * "router", "connectors"); -1 if none. */
int conf_role_of_stage(const char *stage);
const char *conf_role_name(enum conf_role r);

#endif
