// links:
/*
 * test_confschema - the schema walk of lib/conf.c, swept from the table itself
 * (lib/conf_schema.c): for every row of every group, a value of the wrong type is refused
 * with the file:line of the setting, an integer at its bounds is taken and one past them
 * refused, every enum name is read as its value and an unknown one refused with the list
 * of names, every group refuses an unknown key, and a file that sets nothing gives every
 * row its default. A row added to the table is swept without an edit here. The stage
 * signatures (spoold's SIGHUP) change for the stages that read a key and no others.
 *
 * With --keys, prints one line per row, "GROUP KEY TYPE" ("." is the top level) and one
 * "group NAME" line per group, for tests/t_docs.py, which checks them against
 * conf/spoold.conf and spoold.conf(5).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "conf.h"
#include "conf_schema.h"
#include "util.h"

/* Every config starts with three lines, so that the setting under test is on line 4. */
#define BASE_SCANNER                                                                               \
	"scanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; clean_codes = [ 0 ]; " \
	"infected_codes = [ 1 ]; } );\n"
#define BASE_CONNECTOR "connectors = ( { name = \"smtp\"; domains = [ \"*\" ]; } );\n"
#define BASE           "spool_dir = \"s\";\n" BASE_SCANNER BASE_CONNECTOR

/* The keys the base text sets already (a second one is a syntax error); the keys whose
 * good values depend on others (a scanner's type and mode, a clamd's addresses, a
 * connector's type) and the all-backup check are hand-written cases in test_conftable.c.
 * Then the scanner keys only a clamd scanner takes. */
static const char *const base_keys[] = {"spool_dir",      "name",    "argv", "clean_codes",
                                        "infected_codes", "domains", NULL};
static const char *const dependent_keys[] = {"type", "mode", "addresses", NULL};
static const char *const clamd_keys[] = {"peer_user", "max_file_size", "balance",    "down_min",
                                         "down_max",  "cache",         "cache_size", NULL};
/* Keys whose order another key checks: an in-range value is set on both. */
static const char *const pairs[][2] = {{"hold_retry_min", "hold_retry_max"},
                                       {"down_min", "down_max"}};

static char dir[] = "/tmp/test_confschema.XXXXXX";
static int n_loaded;

static int in_list(const char *const *list, const char *key)
{
	for (; *list; list++)
		if (strcmp(*list, key) == 0)
			return 1;
	return 0;
}

static const struct conf_row *row_find(const struct conf_group *g, const char *key)
{
	for (size_t i = 0; i < g->n_rows; i++)
		if (strcmp(g->rows[i].key, key) == 0)
			return &g->rows[i];
	return NULL;
}

/* The config text that sets "key = value;" (and extra, also in the group) on line 4. */
static char *text_with(const struct conf_group *g, const char *key, const char *value,
                       const char *extra)
{
	const char *x = extra ? extra : "";
	if (g->kind == CG_TOP)
		return xasprintf(BASE "%s = %s; %s\n", key, value, x);
	if (g->kind == CG_GROUP)
		return xasprintf(BASE "%s = { %s = %s; %s };\n", g->name, key, value, x);
	if (strcmp(g->name, "scanners") == 0 && in_list(clamd_keys, key))
		return xasprintf("spool_dir = \"s\";\n" BASE_CONNECTOR
		                 "scanners = ( { name = \"c\"; type = \"clamd\"; addresses = [ "
		                 "\"unix:/nonexistent.sock\" ];\n%s = %s; %s\n} );\n",
		                 key, value, x);
	if (strcmp(g->name, "scanners") == 0)
		return xasprintf(
		    "spool_dir = \"s\";\n" BASE_CONNECTOR
		    "scanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; "
		    "clean_codes = [ 0 ]; infected_codes = [ 1 ];\n%s = %s; %s\n} );\n",
		    key, value, x);
	return xasprintf("spool_dir = \"s\";\n" BASE_SCANNER
	                 "connectors = ( { name = \"smtp\";\n%s = %s; %s\n} );\n",
	                 key, value, x);
}

/* Load text from a file of its own; NULL with err set on a config error. */
static struct conf *load(const char *text, char *err, size_t errlen)
{
	char path[128];
	snprintf(path, sizeof path, "%s/c%d.conf", dir, n_loaded++);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write_all(fd, text, strlen(text)) < 0 || close(fd) < 0) {
		snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
		return NULL;
	}
	struct conf *c = conf_try_load(path, err, errlen);
	unlink(path);
	return c;
}

/* The struct a row of g is in: the conf, its group, or the first list element. */
static char *obj_of(const struct conf_group *g, struct conf *c)
{
	char *p;
	if (g->kind != CG_LIST)
		return (char *)c + g->off;
	memcpy(&p, (char *)c + g->off, sizeof p);
	return p;
}

/* One row set to value: it must load and read back as want (an integer), or fail on line
 * 4 with hint in the message. */
static void expect(const char *what, const struct conf_group *g, const struct conf_row *r,
                   const char *value, const char *extra, int ok, long long want, const char *hint)
{
	char name[160], err[2048] = "";
	snprintf(name, sizeof name, "%s.%s=%s", g->name ? g->name : "", r->key, value);
	char *text = text_with(g, r->key, value, extra);
	struct conf *c = load(text, err, sizeof err);
	int good;
	if (ok) {
		long long got = -1;
		if (c) {
			void *p = obj_of(g, c) + r->off;
			if (r->type == CT_COUNT || r->type == CT_SIZE)
				got = (long long)*(uint64_t *)p;
			else
				got = *(int *)p;
		}
		good = c != NULL && got == want;
		if (!good)
			printf("  %s: got %lld, want %lld; error \"%s\"\n", name, got, want, err);
	} else {
		good = c == NULL && strstr(err, ":4: ") && strstr(err, hint);
		if (!good)
			printf("  %s: error \"%s\", want line 4 and \"%s\"\n", name, err, hint);
	}
	CHECK_ROW(what, name, good);
	conf_free(c);
	free(text);
}

/* The partner of a key whose order is checked, set to v clamped into its own range. */
static char *pair_extra(const struct conf_group *g, const char *key, long long v)
{
	for (size_t i = 0; i < ARRAY_LEN(pairs); i++)
		for (int k = 0; k < 2; k++)
			if (strcmp(pairs[i][k], key) == 0) {
				const struct conf_row *o = row_find(g, pairs[i][!k]);
				long long w = v < o->min ? o->min : v > o->max ? o->max : v;
				return xasprintf("%s = %lld;", o->key, w);
			}
	return NULL;
}

static void sweep_int(const struct conf_group *g, const struct conf_row *r)
{
	long long at[2] = {r->min, r->max};
	char v[64];
	for (int i = 0; i < 2; i++) {
		char *extra = pair_extra(g, r->key, at[i]);
		snprintf(v, sizeof v, "%lld%s", at[i], at[i] > 2147483647 ? "L" : "");
		expect("bounds", g, r, v, extra, 1, at[i], NULL);
		free(extra);
	}
	snprintf(v, sizeof v, "%lld", r->min - 1);
	expect("bounds", g, r, v, NULL, 0, 0, "out of range");
	snprintf(v, sizeof v, "%lldL", r->max + 1);
	expect("bounds", g, r, v, NULL, 0, 0, "out of range");
	expect("types", g, r, "\"7\"", NULL, 0, 0, "must be an integer");
}

static void sweep_u64(const struct conf_group *g, const struct conf_row *r)
{
	char v[64];
	snprintf(v, sizeof v, "%lld", r->min);
	expect("bounds", g, r, v, NULL, 1, r->min, NULL);
	expect("bounds", g, r, "5000000000L", NULL, 1, 5000000000ll, NULL);
	snprintf(v, sizeof v, "%lld", r->min - 1);
	expect("bounds", g, r, v, NULL, 0, 0, "must be at least");
	expect("types", g, r, "true", NULL, 0, 0, "must be an integer");
}

static void sweep_enum(const struct conf_group *g, const struct conf_row *r)
{
	char v[128];
	size_t n = 0;
	for (; r->names[n]; n++) {
		snprintf(v, sizeof v, "\"%s\"", r->names[n]);
		expect("enum", g, r, v, NULL, 1, (long long)n, NULL);
		/* bounds-checked both ways: the name table gives the file's spelling back */
		CHECK_ROW("enum_name", r->names[n],
		          strcmp(conf_enum_name(r->names, (int)n, r->key), r->names[n]) == 0);
	}
	expect("enum", g, r, "\"no-such-value\"", NULL, 0, 0, "'no-such-value' is unknown (use \"");
	/* every name is offered in the message */
	char *text = text_with(g, r->key, "\"no-such-value\"", NULL);
	char err[2048] = "";
	struct conf *c = load(text, err, sizeof err);
	int all = c == NULL;
	for (size_t i = 0; i < n; i++) {
		snprintf(v, sizeof v, "\"%s\"", r->names[i]);
		all = all && strstr(err, v) != NULL;
	}
	CHECK_ROW("enum_names_offered", r->key, all);
	conf_free(c);
	free(text);
	expect("types", g, r, "1", NULL, 0, 0, "must be a string");
}

/* Every row of every group, by its type. */
static void sweep_rows(void)
{
	for (size_t i = 0; i < conf_n_groups; i++) {
		const struct conf_group *g = &conf_groups[i];
		for (size_t k = 0; k < g->n_rows; k++) {
			const struct conf_row *r = &g->rows[k];
			if (g->kind != CG_GROUP &&
			    (in_list(base_keys, r->key) || in_list(dependent_keys, r->key)))
				continue;
			switch (r->type) {
			case CT_INT:
			case CT_SECONDS:
				sweep_int(g, r);
				break;
			case CT_COUNT:
			case CT_SIZE:
				sweep_u64(g, r);
				break;
			case CT_BOOL:
				if (strcmp(r->key, "backup") != 0) /* the only scanner */
					expect("bool", g, r, "true", NULL, 1, 1, NULL);
				expect("bool", g, r, "false", NULL, 1, 0, NULL);
				expect("types", g, r, "1", NULL, 0, 0, "must be true or false");
				break;
			case CT_ENUM:
				sweep_enum(g, r);
				break;
			case CT_STRING:
			case CT_PATH:
			case CT_USER:
			case CT_MODE:
				expect("types", g, r, "5", NULL, 0, 0, "must be a string");
				break;
			case CT_STRV:
				expect("types", g, r, "5", NULL, 0, 0, "must be a list of strings");
				expect("types", g, r, "[ 5 ]", NULL, 0, 0,
				       "must contain only strings");
				break;
			case CT_CODES:
				expect("types", g, r, "5", NULL, 0, 0,
				       "must be a list of exit codes");
				expect("types", g, r, "[ 256 ]", NULL, 0, 0, "from 0 to 255");
				break;
			case CT__COUNT:
				CHECK_ROW("types", r->key, 0);
				break;
			}
		}
	}
}

/* Every group refuses a key it does not have, naming it, its group and its line. */
static void sweep_unknown(void)
{
	for (size_t i = 0; i < conf_n_groups; i++) {
		const struct conf_group *g = &conf_groups[i];
		char hint[160], err[2048] = "";
		snprintf(hint, sizeof hint,
		         "unknown key 'no_such_key' in %s (known keys: ", g->what);
		char *text = text_with(g, "no_such_key", "1", NULL);
		struct conf *c = load(text, err, sizeof err);
		int good = c == NULL && strstr(err, ":4: ") && strstr(err, hint);
		/* the message lists the group's keys */
		for (size_t k = 0; good && k < g->n_rows; k++)
			good = strstr(err, g->rows[k].key) != NULL;
		if (!good)
			printf("  error \"%s\", want line 4 and \"%s\"\n", err, hint);
		CHECK_ROW("unknown_key", g->name ? g->name : "top", good);
		conf_free(c);
		free(text);
	}
}

/* A file that sets nothing but the base: every row its default. lmtp.max_message_size is
 * 0 in the table, for "splitter.max_message_size". */
static void sweep_defaults(void)
{
	char err[2048] = "";
	struct conf *c = load(BASE, err, sizeof err);
	CHECK("defaults/load", c != NULL);
	if (c == NULL) {
		printf("  error: %s\n", err);
		return;
	}
	for (size_t i = 0; i < conf_n_groups; i++) {
		const struct conf_group *g = &conf_groups[i];
		char *obj = obj_of(g, c);
		for (size_t k = 0; k < g->n_rows; k++) {
			const struct conf_row *r = &g->rows[k];
			void *p = obj + r->off;
			char name[128];
			snprintf(name, sizeof name, "%s.%s", g->name ? g->name : "", r->key);
			if (g->kind != CG_GROUP && in_list(base_keys, r->key))
				continue;
			if (r->type == CT_COUNT || r->type == CT_SIZE) {
				uint64_t want = (uint64_t)r->def;
				if (r->def == 0 && strcmp(name, "lmtp.max_message_size") == 0)
					want = c->splitter.max_message_size;
				CHECK_ROW("defaults", name, *(uint64_t *)p == want);
			} else if (r->type <= CT_SECONDS || r->type == CT_ENUM ||
			           r->type == CT_MODE) {
				CHECK_ROW("defaults", name, *(int *)p == (int)r->def);
			} else if (r->def_str) {
				CHECK_ROW("defaults", name, strcmp(*(char **)p, r->def_str) == 0);
			} else if (r->def_strv) {
				char **v = *(char ***)p;
				size_t n = 0;
				while (r->def_strv[n] && v[n] && strcmp(v[n], r->def_strv[n]) == 0)
					n++;
				CHECK_ROW("defaults", name, r->def_strv[n] == NULL && v[n] == NULL);
			}
		}
	}
	/* the defaults the checks put in */
	CHECK("defaults/default_connector", strcmp(c->router.default_connector, "smtp") == 0);
	CHECK("defaults/metrics_file", strstr(c->metrics.file, "/s/run/metrics.prom") != NULL);
	CHECK("defaults/lmtp_socket", strstr(c->lmtp.socket, "/s/run/lmtp") != NULL);
	conf_free(c);
}

/* Changing one setting changes the signature of exactly the stages that read it. */
static const struct {
	const char *name;
	const char *text;
	const char *changed; /* the stages, in spoold's order, as "s r R c l" letters; '*' shared */
} sig_cases[] = {
    {"router_key", BASE "router = { hold_retry_min = 1; };\n", "R"},
    {"splitter_key", BASE "splitter = { max_parts = 7; };\n", "s"},
    {"splitter_size_read_by_lmtpd", BASE "splitter = { max_message_size = 7; };\n", "sl"},
    {"runner_key", BASE "scanner_runner = { slot_wait = 7; };\n", "r"},
    {"canary_interval", BASE "canary_interval = 7;\n", "r"},
    {"lmtp_key", BASE "lmtp = { timeout = 7; };\n", "l"},
    {"scanner_key",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; "
     "clean_codes = [ 0 ]; infected_codes = [ 1 ]; timeout = 7; } );\n" BASE_CONNECTOR,
     "rR"},
    {"second_scanner",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; "
     "clean_codes = [ 0 ]; infected_codes = [ 1 ]; },\n { name = \"d\"; argv = [ \"/bin/true\", "
     "\"{file}\" ]; clean_codes = [ 0 ]; infected_codes = [ 1 ]; } );\n" BASE_CONNECTOR,
     "rR"},
    {"connector_key",
     "spool_dir = \"s\";\n" BASE_SCANNER
     "connectors = ( { name = \"smtp\"; domains = [ \"*\" ]; timeout = 7; } );\n",
     "Rc"},
    {"log_level_shared", BASE "log = { level = \"debug\"; };\n", "srRcl*"},
    {"rescan_shared", BASE "rescan_interval = 7;\n", "srRcl*"},
    {"metrics_spoold_only", BASE "metrics = { interval = 7; };\n", ""},
    {"control_group_spoold_only", BASE "control_group = \"nogroup\";\n", ""},
    {"nothing", BASE "\n", ""},
};

static void sweep_signatures(void)
{
	static const char *const stages[] = {"splitter",   "scanner-runner", "router",
	                                     "connectors", "lmtpd",          NULL};
	static const char letters[] = "srRcl*";
	char err[2048] = "";
	struct conf *base = load(BASE, err, sizeof err);
	for (size_t i = 0; base && i < ARRAY_LEN(sig_cases); i++) {
		struct conf *c = load(sig_cases[i].text, err, sizeof err);
		char got[8] = "";
		size_t n = 0;
		for (size_t s = 0; c && s < 6; s++) {
			char *a = conf_stage_signature(base, stages[s]);
			char *b = conf_stage_signature(c, stages[s]);
			if (strcmp(a, b) != 0)
				got[n++] = letters[s];
			free(a);
			free(b);
		}
		if (c == NULL || strcmp(got, sig_cases[i].changed) != 0)
			printf("  changed \"%s\", want \"%s\" (%s)\n", got, sig_cases[i].changed,
			       c ? "" : err);
		CHECK_ROW("signature", sig_cases[i].name,
		          c != NULL && strcmp(got, sig_cases[i].changed) == 0);
		conf_free(c);
	}
	CHECK("signature/base_loads", base != NULL);
	conf_free(base);
}

/* The public enum names; a value outside the table must abort, not read past it. */
static void check_enum_names(void)
{
	CHECK("names/infected_quarantine",
	      strcmp(conf_infected_action_name(INFECTED_QUARANTINE), "quarantine") == 0);
	CHECK("names/infected_strip",
	      strcmp(conf_infected_action_name(INFECTED_STRIP), "strip") == 0);
	CHECK("names/hold_deliver",
	      strcmp(conf_hold_expiry_action_name(HOLD_EXPIRY_DELIVER), "deliver") == 0);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
		if (null >= 0)
			dup2(null, 2);
		conf_infected_action_name((enum infected_action)(INFECTED_STRIP + 1));
		_exit(0);
	}
	int st = 0;
	CHECK("names/out_of_range_panics",
	      pid > 0 && waitpid(pid, &st, 0) == pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
}

static void print_keys(void)
{
	for (size_t i = 0; i < conf_n_groups; i++) {
		const struct conf_group *g = &conf_groups[i];
		if (g->name)
			printf("group %s\n", g->name);
		for (size_t k = 0; k < g->n_rows; k++)
			printf("%s %s %s\n", g->name ? g->name : ".", g->rows[k].key,
			       conf_type_name(g->rows[k].type));
	}
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--keys") == 0) {
		print_keys();
		return 0;
	}
	if (mkdtemp(dir) == NULL) {
		printf("FAIL setup: mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	sweep_rows();
	sweep_unknown();
	sweep_defaults();
	sweep_signatures();
	check_enum_names();
	if (rmdir(dir) < 0)
		printf("  cannot remove %s: %s\n", dir, strerror(errno));
	return failures ? 1 : 0;
}
