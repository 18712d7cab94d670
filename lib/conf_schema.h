/*
 * conf_schema - the table behind lib/conf.c, after Postfix's CONFIG_*_TABLE: one row per
 * key with its type, bounds, default and the stages that read it, and one group per
 * libconfig group or list. conf.c walks it once to check the types and bounds, set the
 * defaults and reject unknown keys; a group's check hook then does what one row cannot
 * (a key that depends on another, a user name to resolve, a file that must exist). The
 * same table gives each stage's settings signature (spoold's SIGHUP) and frees a conf.
 *
 * For lib/conf.c, lib/conf_schema.c and the unit tests; programs use conf.h.
 *
 * Adding a key: one row in its group's array in conf_schema.c (and its field in conf.h),
 * and a line in conf/spoold.conf and in spoold.conf(5): tests/t_docs.py fails until all
 * three agree.
 *
 * DIAGNOSTICS
 *   A bad value is reported through conf_fail (the first error wins) with the file and
 *   line of the setting. A row whose type the walk does not know, or an enum value out of
 *   its name table, is an internal inconsistency: log_panic.
 */
#ifndef SPOOLD_CONF_SCHEMA_H
#define SPOOLD_CONF_SCHEMA_H

#include <libconfig.h>
#include <stddef.h>

#include "conf.h"

/* The stages that read a key, as a mask: a key read by a stage restarts it on SIGHUP
 * when its value changes. CONF_ST_SPOOLD alone: only spoold reads it (no restart). */
enum {
	CONF_ST_SPLITTER = 1u << 0,
	CONF_ST_RUNNER = 1u << 1,
	CONF_ST_ROUTER = 1u << 2,
	CONF_ST_CONNECTORS = 1u << 3,
	CONF_ST_LMTPD = 1u << 4,
	CONF_ST_SPOOLD = 1u << 5,
	CONF_ST_EXPORTER = 1u << 6,
	/* read by every stage: the shared settings */
	CONF_ST_ALL = CONF_ST_SPLITTER | CONF_ST_RUNNER | CONF_ST_ROUTER | CONF_ST_CONNECTORS |
	              CONF_ST_LMTPD | CONF_ST_SPOOLD | CONF_ST_EXPORTER,
};

enum conf_type {
	CT_BOOL,    /* int, true or false */
	CT_INT,     /* int in [min, max] */
	CT_SECONDS, /* int in [min, max]: a duration in seconds */
	CT_COUNT,   /* uint64_t, at least min */
	CT_SIZE,    /* uint64_t, bytes, at least min */
	CT_STRING,  /* char *: def_str (NULL: stays NULL when unset) */
	CT_PATH,    /* char *: a relative path is taken from the config's directory; "" stays "" */
	CT_USER,    /* char *: a user name ("" none), resolved by the group's check */
	CT_ENUM,    /* int: the index of the value in names[] */
	CT_MODE,    /* int: permission bits, written as an octal string ("0660") */
	CT_STRV,    /* char **: a list of strings, {confdir} expanded; def_strv when unset */
	CT_CODES,   /* int * and a size_t count at off_n: exit codes 0 to 255 */
	CT__COUNT
};

/* Row flags. */
enum { CF_REQUIRED = 1u << 0 };

struct conf_row {
	const char *key;
	enum conf_type type;
	size_t off;   /* of the value in the group's struct */
	size_t off_n; /* CT_CODES: of the count */
	long long min, max;
	long long def;       /* CT_BOOL, CT_INT, CT_SECONDS, CT_COUNT, CT_SIZE, CT_ENUM, CT_MODE */
	const char *def_str; /* CT_STRING, CT_PATH, CT_USER */
	const char *const *def_strv; /* CT_STRV, NULL-terminated */
	const char *const *names;    /* CT_ENUM, NULL-terminated */
	const char *label;           /* the key's name in messages when not key */
	unsigned flags;              /* CF_* */
	unsigned stages;             /* CONF_ST_*; 0: the group's */
};

enum conf_group_kind {
	CG_TOP,   /* the top level: rows on struct conf */
	CG_GROUP, /* name = { ... }; its struct at off in struct conf */
	CG_LIST   /* name = ( { ... }, ... ); an array at off, its length at off_n */
};

struct conf_ctx {
	const char *file;
	char *confdir;
	char *err;
	size_t errlen;
	int failed;
};

struct conf_group {
	const char *name; /* NULL: the top level */
	enum conf_group_kind kind;
	const struct conf_row *rows;
	size_t n_rows;
	unsigned stages;       /* of its rows */
	size_t off, off_n;     /* see enum conf_group_kind */
	size_t elem_size;      /* CG_LIST */
	const char *what;      /* in "unknown key 'x' in WHAT" */
	const char *missing;   /* CG_LIST: the error when the list is missing */
	const char *not_group; /* CG_LIST: the error when an element is not a group */
	/* After the rows of one group or list element: what depends on more than one key.
	 * s is the group's setting (NULL when the group is absent), obj its struct. */
	void (*check)(struct conf_ctx *cx, const config_setting_t *s, void *obj, struct conf *c);
	/* CG_LIST: after every element (s is the list). */
	void (*done)(struct conf_ctx *cx, const config_setting_t *s, struct conf *c);
};

/* The schema, in the order of the walk: the top level first (spool_dir), then each group
 * after those its defaults depend on. */
extern const struct conf_group conf_groups[];
extern const size_t conf_n_groups;

/* conf.c, for the hooks in conf_schema.c. */
void conf_fail(struct conf_ctx *cx, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const config_setting_t *conf_get(const config_setting_t *g, const char *key);
char *conf_path_resolve(struct conf_ctx *cx, const char *p);
/* The name of value v of a names[] table; log_panic when v is not in it. */
const char *conf_enum_name(const char *const *names, int v, const char *what);
/* The type's name as the documentation says it ("seconds", "size", ...). */
const char *conf_type_name(enum conf_type t);
void conf_strv_free(char **v);

#endif
