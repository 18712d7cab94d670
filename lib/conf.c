/*
 * conf - see conf.h. One walk over the schema of lib/conf_schema.c: for every group and
 * list element, each member must be a row of the group (so a typo is an error with its
 * line instead of a silently ignored setting), each row gets its default and then its
 * value, checked against its type and bounds; the group's check hook does the rest.
 * The same table gives the settings signatures and frees a conf.
 */
#include "conf.h"

#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf_schema.h"
#include "spool.h"
#include "util.h"

void conf_fail(struct conf_ctx *cx, const config_setting_t *s, const char *fmt, ...)
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

const config_setting_t *conf_get(const config_setting_t *g, const char *key)
{
	return g && config_setting_is_group(g) ? config_setting_get_member(g, key) : NULL;
}

static void *conf_at(void *obj, size_t off)
{
	return (char *)obj + off;
}

/* The array of a CG_LIST group, read and set through memcpy: the field is a pointer to
 * its own struct type (struct conf_scanner *), never accessed as another pointer type. */
static char *conf_list_get(const struct conf *c, const struct conf_group *g)
{
	char *p;
	memcpy(&p, (const char *)c + g->off, sizeof p);
	return p;
}

static void conf_list_set(struct conf *c, const struct conf_group *g, void *p)
{
	memcpy((char *)c + g->off, &p, sizeof p);
}

static size_t conf_list_len(const struct conf *c, const struct conf_group *g)
{
	size_t n;
	memcpy(&n, (const char *)c + g->off_n, sizeof n);
	return n;
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

char *conf_path_resolve(struct conf_ctx *cx, const char *p)
{
	if (p[0] == '/')
		return conf_path_clean(p);
	char *joined = xasprintf("%s/%s", cx->confdir, p);
	char *clean = conf_path_clean(joined);
	free(joined);
	return clean;
}

void conf_strv_free(char **v)
{
	if (v == NULL)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

static size_t conf_names_count(const char *const *names)
{
	size_t n = 0;
	while (names[n])
		n++;
	return n;
}

const char *conf_enum_name(const char *const *names, int v, const char *what)
{
	if (v < 0 || (size_t)v >= conf_names_count(names))
		log_panic("conf_enum_name: %s value %d is not one of its %zu names", what, v,
		          conf_names_count(names));
	return names[v];
}

const char *conf_type_name(enum conf_type t)
{
	static const char *const names[CT__COUNT] = {
	    [CT_BOOL] = "bool",   [CT_INT] = "int",   [CT_SECONDS] = "seconds",
	    [CT_COUNT] = "count", [CT_SIZE] = "size", [CT_STRING] = "string",
	    [CT_PATH] = "path",   [CT_USER] = "user", [CT_ENUM] = "enum",
	    [CT_MODE] = "mode",   [CT_STRV] = "list", [CT_CODES] = "exit-codes"};
	if ((unsigned)t >= CT__COUNT)
		log_panic("conf_type_name: type %d out of range", (int)t);
	return names[t];
}

/* ---- one row: its default and its value --------------------------------------------- */

static char **conf_strv_dup(const char *const *v)
{
	size_t n = conf_names_count(v);
	char **out = xcalloc(n + 1, sizeof(char *));
	for (size_t i = 0; i < n; i++)
		out[i] = xstrdup(v[i]);
	return out;
}

static void conf_row_default(const struct conf_row *r, void *obj)
{
	void *p = conf_at(obj, r->off);
	switch (r->type) {
	case CT_BOOL:
	case CT_INT:
	case CT_SECONDS:
	case CT_ENUM:
	case CT_MODE:
		*(int *)p = (int)r->def;
		return;
	case CT_COUNT:
	case CT_SIZE:
		*(uint64_t *)p = (uint64_t)r->def;
		return;
	case CT_STRING:
	case CT_PATH:
	case CT_USER:
		*(char **)p = r->def_str ? xstrdup(r->def_str) : NULL;
		return;
	case CT_STRV:
		*(char ***)p = r->def_strv ? conf_strv_dup(r->def_strv) : NULL;
		return;
	case CT_CODES:
		*(int **)p = NULL;
		*(size_t *)conf_at(obj, r->off_n) = 0;
		return;
	case CT__COUNT:
		break;
	}
	log_panic("conf_row_default: key %s has type %d", r->key, (int)r->type);
}

/* Free what a row's value owns (the walk and conf_free). */
static void conf_row_free(const struct conf_row *r, void *obj)
{
	void *p = conf_at(obj, r->off);
	switch (r->type) {
	case CT_STRING:
	case CT_PATH:
	case CT_USER:
		free(*(char **)p);
		*(char **)p = NULL;
		return;
	case CT_STRV:
		conf_strv_free(*(char ***)p);
		*(char ***)p = NULL;
		return;
	case CT_CODES:
		free(*(int **)p);
		*(int **)p = NULL;
		return;
	default:
		return;
	}
}

static int conf_is_int(const config_setting_t *s)
{
	int t = config_setting_type(s);
	return t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;
}

static void conf_set_int(struct conf_ctx *cx, const struct conf_row *r, const config_setting_t *s,
                         int *out)
{
	if (!conf_is_int(s)) {
		conf_fail(cx, s, "'%s' must be an integer, for example %s = %lld;", r->key, r->key,
		          r->min);
		return;
	}
	long long v = config_setting_get_int64(s);
	if (v < r->min || v > r->max) {
		conf_fail(cx, s, "'%s' = %lld is out of range (%lld to %lld)", r->key, v, r->min,
		          r->max);
		return;
	}
	*out = (int)v;
}

static void conf_set_u64(struct conf_ctx *cx, const struct conf_row *r, const config_setting_t *s,
                         uint64_t *out)
{
	if (!conf_is_int(s)) {
		conf_fail(cx, s,
		          "'%s' must be an integer (bytes or a count); use an L suffix "
		          "for values over 2147483647",
		          r->key);
		return;
	}
	long long v = config_setting_get_int64(s);
	if (v < 0 || v < r->min) {
		conf_fail(cx, s, "'%s' = %lld must be at least %lld", r->key, v, r->min);
		return;
	}
	*out = (uint64_t)v;
}

static const char *conf_get_str(struct conf_ctx *cx, const struct conf_row *r,
                                const config_setting_t *s)
{
	if (config_setting_type(s) != CONFIG_TYPE_STRING) {
		conf_fail(cx, s, "'%s' must be a string in double quotes", r->key);
		return NULL;
	}
	return config_setting_get_string(s);
}

static void conf_set_enum(struct conf_ctx *cx, const struct conf_row *r, const config_setting_t *s,
                          int *out)
{
	const char *v = conf_get_str(cx, r, s);
	if (v == NULL)
		return;
	size_t n = conf_names_count(r->names);
	for (size_t i = 0; i < n; i++)
		if (strcmp(v, r->names[i]) == 0) {
			*out = (int)i;
			return;
		}
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < n; i++)
		buf_printf(&b, "%s\"%s\"", i == 0 ? "" : i + 1 == n ? " or " : ", ", r->names[i]);
	conf_fail(cx, s, "%s '%s' is unknown (use %s)", r->label ? r->label : r->key, v,
	          buf_cstr(&b));
	buf_free(&b);
}

/* A string: libconfig has no octal numbers. */
static void conf_set_mode(struct conf_ctx *cx, const struct conf_row *r, const config_setting_t *s,
                          int *out)
{
	const char *v = conf_get_str(cx, r, s);
	if (v == NULL)
		return;
	char *end;
	long m = strtol(v, &end, 8);
	if (v[0] < '0' || v[0] > '7' || *end != '\0' || m < 0 || m > 0777) {
		conf_fail(cx, s, "%s '%s' must be octal permission bits, e.g. \"0660\"", r->key, v);
		return;
	}
	*out = (int)m;
}

/* A list or array of strings into a NULL-terminated vector; {confdir} is expanded. */
static void conf_set_strv(struct conf_ctx *cx, const struct conf_row *r, const config_setting_t *s,
                          char ***out)
{
	if (!config_setting_is_aggregate(s) || config_setting_is_group(s)) {
		conf_fail(cx, s, "'%s' must be a list of strings: %s = [ \"...\" ];", r->key,
		          r->key);
		return;
	}
	int n = config_setting_length(s);
	char **v = xcalloc((size_t)n + 1, sizeof(char *));
	for (int i = 0; i < n; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		if (config_setting_type(e) != CONFIG_TYPE_STRING) {
			conf_fail(cx, e, "'%s' must contain only strings", r->key);
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
	conf_strv_free(*out);
	*out = v;
}

static void conf_set_codes(struct conf_ctx *cx, const struct conf_row *r, const config_setting_t *s,
                           void *obj)
{
	size_t *n = conf_at(obj, r->off_n);
	if (!config_setting_is_aggregate(s) || config_setting_is_group(s)) {
		conf_fail(cx, s, "'%s' must be a list of exit codes: %s = [ 0 ];", r->key, r->key);
		return;
	}
	int len = config_setting_length(s);
	int *v = xcalloc((size_t)len + 1, sizeof(int));
	for (int i = 0; i < len; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		if (config_setting_type(e) != CONFIG_TYPE_INT || config_setting_get_int(e) < 0 ||
		    config_setting_get_int(e) > 255) {
			conf_fail(cx, e, "'%s' must contain exit codes from 0 to 255", r->key);
			continue;
		}
		v[(*n)++] = config_setting_get_int(e);
	}
	*(int **)conf_at(obj, r->off) = v;
}

static void conf_row_set(struct conf_ctx *cx, const struct conf_row *r, const config_setting_t *s,
                         void *obj)
{
	void *p = conf_at(obj, r->off);
	const char *str;
	switch (r->type) {
	case CT_BOOL:
		if (config_setting_type(s) != CONFIG_TYPE_BOOL)
			conf_fail(cx, s, "'%s' must be true or false", r->key);
		else
			*(int *)p = config_setting_get_bool(s);
		return;
	case CT_INT:
	case CT_SECONDS:
		conf_set_int(cx, r, s, p);
		return;
	case CT_COUNT:
	case CT_SIZE:
		conf_set_u64(cx, r, s, p);
		return;
	case CT_STRING:
	case CT_USER:
	case CT_PATH:
		if ((str = conf_get_str(cx, r, s)) == NULL)
			return;
		free(*(char **)p);
		/* "" stays "": for a path it means off, or the default its group's check
		 * puts in (metrics.file, lmtp.socket). */
		*(char **)p =
		    r->type == CT_PATH && str[0] ? conf_path_resolve(cx, str) : xstrdup(str);
		return;
	case CT_ENUM:
		conf_set_enum(cx, r, s, p);
		return;
	case CT_MODE:
		conf_set_mode(cx, r, s, p);
		return;
	case CT_STRV:
		conf_set_strv(cx, r, s, p);
		return;
	case CT_CODES:
		conf_set_codes(cx, r, s, obj);
		return;
	case CT__COUNT:
		break;
	}
	log_panic("conf_row_set: key %s has type %d", r->key, (int)r->type);
}

/* ---- the walk ---------------------------------------------------------------------- */

static const struct conf_row *conf_row_find(const struct conf_group *g, const char *key)
{
	for (size_t i = 0; i < g->n_rows; i++)
		if (strcmp(g->rows[i].key, key) == 0)
			return &g->rows[i];
	return NULL;
}

/* A member of the top level may also be a group or list. */
static int conf_key_known(const struct conf_group *g, const char *key)
{
	if (conf_row_find(g, key))
		return 1;
	if (g->kind != CG_TOP)
		return 0;
	for (size_t i = 0; i < conf_n_groups; i++)
		if (conf_groups[i].name && strcmp(conf_groups[i].name, key) == 0)
			return 1;
	return 0;
}

/* Every member of s must be a key of g: a typo is an error with its line. */
static void conf_keys_check(struct conf_ctx *cx, const struct conf_group *g,
                            const config_setting_t *s)
{
	int n = config_setting_length(s);
	for (int i = 0; i < n; i++) {
		config_setting_t *m = config_setting_get_elem(s, (unsigned)i);
		const char *name = config_setting_name(m);
		if (name && conf_key_known(g, name))
			continue;
		struct buf b;
		buf_init(&b);
		for (size_t k = 0; k < g->n_rows; k++)
			buf_printf(&b, "%s%s", k ? ", " : "", g->rows[k].key);
		for (size_t k = 0; g->kind == CG_TOP && k < conf_n_groups; k++)
			if (conf_groups[k].name)
				buf_printf(&b, ", %s", conf_groups[k].name);
		conf_fail(cx, m, "unknown key '%s' in %s (known keys: %s)", name ? name : "?",
		          g->what, buf_cstr(&b));
		buf_free(&b);
	}
}

/* One group or list element (s NULL: absent, every row takes its default). */
static void conf_walk_obj(struct conf_ctx *cx, const struct conf_group *g,
                          const config_setting_t *s, void *obj, struct conf *c)
{
	if (s)
		conf_keys_check(cx, g, s);
	for (size_t i = 0; i < g->n_rows; i++) {
		const struct conf_row *r = &g->rows[i];
		conf_row_default(r, obj);
		const config_setting_t *m = conf_get(s, r->key);
		if (m)
			conf_row_set(cx, r, m, obj);
		else if (r->flags & CF_REQUIRED)
			conf_fail(cx, s, "missing '%s' (add %s = \"...\";)", r->key, r->key);
	}
	if (g->check)
		g->check(cx, s, obj, c);
}

static void conf_walk_list(struct conf_ctx *cx, const struct conf_group *g,
                           const config_setting_t *s, struct conf *c)
{
	size_t *n = conf_at(c, g->off_n);
	int len = 0;
	if (s == NULL)
		conf_fail(cx, NULL, "%s", g->missing);
	else if (!config_setting_is_list(s))
		conf_fail(cx, s, "'%s' must be a list of groups: %s = ( { ... } );", g->name,
		          g->name);
	else
		len = config_setting_length(s);
	/* One spare element: an empty list is still an array, never NULL. */
	char *arr = xcalloc((size_t)len + 1, g->elem_size);
	conf_list_set(c, g, arr);
	for (int i = 0; i < len; i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		void *obj = arr + (size_t)i * g->elem_size;
		(*n)++;
		if (!config_setting_is_group(e)) {
			conf_fail(cx, e, "%s", g->not_group);
			e = NULL;
		}
		conf_walk_obj(cx, g, e, obj, c);
	}
	if (g->done && s != NULL && config_setting_is_list(s))
		g->done(cx, s, c);
}

static void conf_walk(struct conf_ctx *cx, const config_setting_t *root, struct conf *c)
{
	for (size_t i = 0; i < conf_n_groups; i++) {
		const struct conf_group *g = &conf_groups[i];
		const config_setting_t *s = g->name ? conf_get(root, g->name) : root;
		if (g->kind == CG_LIST) {
			conf_walk_list(cx, g, s, c);
			continue;
		}
		if (s && !config_setting_is_group(s)) {
			conf_fail(cx, s, "'%s' must be a group: %s = { ... };", g->name, g->name);
			s = NULL;
		}
		conf_walk_obj(cx, g, s, conf_at(c, g->off), c);
	}
}

/* ---- load and free ----------------------------------------------------------------- */

/* The directory of the config file, for relative paths; NULL with err set. */
static char *conf_dir_of(const char *path, char *err, size_t errlen)
{
	char *copy = xstrdup(path);
	char *slash = strrchr(copy, '/');
	char real[PATH_MAX];
	if (slash)
		*slash = '\0';
	if (realpath(slash ? (copy[0] ? copy : "/") : ".", real) == NULL) {
		snprintf(err, errlen, "%s:0: cannot resolve its directory: %s", path,
		         strerror(errno));
		free(copy);
		return NULL;
	}
	free(copy);
	return xstrdup(real);
}

struct conf *conf_try_load(const char *path, char *err, size_t errlen)
{
	config_t cfg;
	struct conf_ctx cx = {.file = path, .err = err, .errlen = errlen};
	if (access(path, R_OK) < 0) {
		snprintf(err, errlen,
		         "%s:0: cannot read the config file: %s (give one with -c FILE; "
		         "conf/spoold.conf is a documented example)",
		         path, strerror(errno));
		return NULL;
	}
	if ((cx.confdir = conf_dir_of(path, err, errlen)) == NULL)
		return NULL;
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
		return NULL;
	}
	struct conf *c = xcalloc(1, sizeof *c);
	c->path = xstrdup(path);
	conf_walk(&cx, config_root_setting(&cfg), c);
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
	/* Every spool this process opens syncs so. With a fleet group the event records in
	 * export/ ride on the commit's sync (docs/INTERNALS.md "Event records"); a per-file
	 * sync of the entries would not cover them, so the fleet keeps syncfs. */
	spool_sync_mode_set(c->fleet.enabled ? SPOOL_SYNC_SYNCFS
	                                     : (enum spool_sync_mode)c->spool_sync);
	return c;
}

static const struct conf_group *conf_group_find(const char *name)
{
	for (size_t i = 0; i < conf_n_groups; i++)
		if (conf_groups[i].name && strcmp(conf_groups[i].name, name) == 0)
			return &conf_groups[i];
	log_panic("conf_group_find: no group %s in the schema", name);
}

void conf_splitter_defaults(struct conf_splitter *sp)
{
	const struct conf_group *g = conf_group_find("splitter");
	for (size_t i = 0; i < g->n_rows; i++)
		conf_row_default(&g->rows[i], sp);
}

void conf_free(struct conf *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < conf_n_groups; i++) {
		const struct conf_group *g = &conf_groups[i];
		size_t n = g->kind == CG_LIST ? conf_list_len(c, g) : 1;
		char *base = g->kind == CG_LIST ? conf_list_get(c, g) : conf_at(c, g->off);
		for (size_t e = 0; base && e < n; e++)
			for (size_t k = 0; k < g->n_rows; k++)
				conf_row_free(&g->rows[k], base + e * g->elem_size);
		if (g->kind == CG_LIST)
			free(base);
	}
	/* Not rows: the path as given and the spool role's copy of user. */
	free(c->path);
	free(c->roles[ROLE_SPOOL].name);
	free(c);
}

const struct conf_connector *conf_connector_find(const struct conf *c, const char *name)
{
	for (size_t i = 0; i < c->n_connectors; i++)
		if (strcmp(c->connectors[i].name, name) == 0)
			return &c->connectors[i];
	return NULL;
}

/* ---- settings signatures ----------------------------------------------------------- */

static void conf_row_print(struct buf *b, const struct conf_row *r, void *obj)
{
	void *p = conf_at(obj, r->off);
	buf_printf(b, "%s=", r->key);
	switch (r->type) {
	case CT_BOOL:
	case CT_INT:
	case CT_SECONDS:
	case CT_ENUM:
	case CT_MODE:
		buf_printf(b, "%d", *(int *)p);
		break;
	case CT_COUNT:
	case CT_SIZE:
		buf_printf(b, "%llu", (unsigned long long)*(uint64_t *)p);
		break;
	case CT_STRING:
	case CT_PATH:
	case CT_USER: {
		const char *s = *(char **)p;
		if (s)
			escape_bytes(b, s, strlen(s), 1 << 20);
		else
			buf_addstr(b, "(unset)");
		break;
	}
	case CT_STRV:
		for (char **v = *(char ***)p; v && *v; v++) {
			escape_bytes(b, *v, strlen(*v), 1 << 20);
			buf_addstr(b, ",");
		}
		break;
	case CT_CODES:
		for (size_t i = 0; i < *(size_t *)conf_at(obj, r->off_n); i++)
			buf_printf(b, "%d,", (*(int **)p)[i]);
		break;
	case CT__COUNT:
		log_panic("conf_row_print: key %s has type %d", r->key, (int)r->type);
	}
	buf_addstr(b, "\n");
}

static unsigned conf_stage_bit(const char *stage)
{
	static const struct {
		const char *name;
		unsigned bit;
	} stages[] = {{"splitter", CONF_ST_SPLITTER}, {"scanner-runner", CONF_ST_RUNNER},
	              {"router", CONF_ST_ROUTER},     {"connectors", CONF_ST_CONNECTORS},
	              {"lmtpd", CONF_ST_LMTPD},       {"exporter", CONF_ST_EXPORTER}};
	for (size_t i = 0; i < ARRAY_LEN(stages); i++)
		if (strcmp(stage, stages[i].name) == 0)
			return stages[i].bit;
	log_panic("conf_stage_signature: no stage %s", stage);
}

/* Built from the parsed values, not the text: a key added to the table is covered
 * without touching spoold, and a change of spelling alone (a comment, "0x10" for 16)
 * restarts nothing. */
char *conf_stage_signature(const struct conf *c, const char *stage)
{
	unsigned want = stage ? conf_stage_bit(stage) : CONF_ST_ALL;
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < conf_n_groups; i++) {
		const struct conf_group *g = &conf_groups[i];
		size_t n = g->kind == CG_LIST ? conf_list_len(c, g) : 1;
		char *base = g->kind == CG_LIST ? conf_list_get(c, g) : (char *)c + g->off;
		unsigned any = 0; /* the stages that read some row of the group */
		for (size_t k = 0; k < g->n_rows; k++)
			any |= g->rows[k].stages ? g->rows[k].stages : g->stages;
		if (g->kind == CG_LIST && (stage ? (any & want) : any == CONF_ST_ALL))
			buf_printf(&b, "%s#%zu\n", g->name, n);
		for (size_t e = 0; base && e < n; e++)
			for (size_t k = 0; k < g->n_rows; k++) {
				const struct conf_row *r = &g->rows[k];
				unsigned st = r->stages ? r->stages : g->stages;
				if (stage ? !(st & want) : st != CONF_ST_ALL)
					continue;
				buf_printf(&b, "%s[%zu].", g->name ? g->name : "", e);
				conf_row_print(&b, r, base + e * g->elem_size);
			}
	}
	buf_cstr(&b);
	return b.data;
}

/* ---- roles ------------------------------------------------------------------------- */

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
