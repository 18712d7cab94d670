// links:
/*
 * test_conftable - the configuration checks (lib/conf.c, conf_try_load) as a table of
 * cases: each config text is written to a temporary file and loaded; a good one must load
 * with the wanted value, a bad one must fail with "FILE:LINE:" of the offending setting
 * and a hint of what is wrong. tests/t_conf.py runs a few of the same through a real
 * program; this table sweeps the types, the bounds and the enum keys without starting
 * one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "conf.h"
#include "util.h"

/* Every config below starts with these three lines (so line 4 is the first of a case). */
#define BASE                                                                                       \
	"spool_dir = \"s\";\n"                                                                     \
	"scanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; clean_codes = [ 0 ]; " \
	"infected_codes = [ 1 ]; } );\n"                                                           \
	"connectors = ( { name = \"smtp\"; domains = [ \"*\" ]; } );\n"

/* BASE without its first line, and an exec scanner with one more setting on line 2. */
#define BASE_TAIL                                                                                  \
	"scanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; clean_codes = [ 0 ]; " \
	"infected_codes = [ 1 ]; } );\n"                                                           \
	"connectors = ( { name = \"smtp\"; domains = [ \"*\" ]; } );\n"
#define BASE_EXEC_WITH(x)                                                                          \
	"spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; "  \
	"clean_codes = [ 0 ]; infected_codes = [ 1 ]; " x " } );\n"                                \
	"connectors = ( { name = \"smtp\"; } );\n"

enum conf_want_kind { WANT_FAIL, WANT_OK };

struct conf_case {
	const char *name;
	const char *text;
	enum conf_want_kind want;
	int line;                           /* WANT_FAIL: the line named in the error */
	const char *hint;                   /* WANT_FAIL: a part of the error */
	int (*check)(const struct conf *c); /* WANT_OK: what must hold, or NULL */
};

static int conf_splitter_instances_3(const struct conf *c)
{
	return c->splitter.instances == 3;
}

static int conf_defaults(const struct conf *c)
{
	return c->splitter.instances == 1 && c->splitter.max_parts == 1000 &&
	       c->splitter.poison_attempts == 3 && c->splitter.scan_raw_message == 1 &&
	       c->n_scanners == 1 && c->n_connectors == 1;
}

static int conf_big_size(const struct conf *c)
{
	return c->splitter.max_message_size == 5000000000ull;
}

/* A relative unix: address is taken from the config's directory; a clamd's mode is clamd. */
static int conf_clamd_resolved(const struct conf *c)
{
	const struct conf_scanner *sc = &c->scanners[0];
	return sc->type == SCANNER_CLAMD && sc->mode == MODE_CLAMD && sc->clamd_addrs &&
	       strncmp(sc->clamd_addrs[0], "unix:/", 6) == 0 &&
	       strstr(sc->clamd_addrs[0], "/x.sock") != NULL && sc->clamd_addrs[1] == NULL;
}

static int conf_enums_read(const struct conf *c)
{
	return c->router.infected_action == INFECTED_STRIP &&
	       c->router.hold_expiry_action == HOLD_EXPIRY_DELIVER &&
	       c->log_target == LOG_TO_SYSLOG && c->log_level == LOG_LVL_ERROR;
}

static const struct conf_case cases[] = {
    {"minimal", BASE, WANT_OK, 0, NULL, conf_defaults},
    {"splitter_instances", BASE "splitter = { instances = 3; };\n", WANT_OK, 0, NULL,
     conf_splitter_instances_3},
    {"int64_size", BASE "splitter = { max_message_size = 5000000000L; };\n", WANT_OK, 0, NULL,
     conf_big_size},
    {"unknown_top_key", BASE "spool_dri = \"x\";\n", WANT_FAIL, 4, "unknown key 'spool_dri'", NULL},
    {"unknown_group_key", BASE "splitter = {\n  instance = 2;\n};\n", WANT_FAIL, 5,
     "unknown key 'instance'", NULL},
    {"unknown_router_key", BASE "router = { infected_actio = \"quarantine\"; };\n", WANT_FAIL, 4,
     "unknown key", NULL},
    {"syntax_error", BASE "splitter = { instances = = 1; };\n", WANT_FAIL, 4, "syntax error", NULL},
    {"int_wants_int", BASE "splitter = { instances = \"two\"; };\n", WANT_FAIL, 4,
     "must be an integer", NULL},
    {"int_below_range", BASE "splitter = { poison_attempts = 0; };\n", WANT_FAIL, 4,
     "out of range (1 to 100)", NULL},
    {"int_above_range", BASE "rescan_interval = 3601;\n", WANT_FAIL, 4, "out of range (1 to 3600)",
     NULL},
    {"size_negative", BASE "splitter = { max_parts = -1; };\n", WANT_FAIL, 4, "must be at least",
     NULL},
    {"bool_wants_bool", BASE "splitter = { scan_raw_message = 1; };\n", WANT_FAIL, 4,
     "must be true or false", NULL},
    {"string_wants_string", BASE "user = 5;\n", WANT_FAIL, 4, "must be a string", NULL},
    {"log_level_enum", BASE "log = { level = \"loud\"; };\n", WANT_FAIL, 4, "log level 'loud'",
     NULL},
    {"log_target_enum", BASE "log = { target = \"paper\"; };\n", WANT_FAIL, 4, "log target 'paper'",
     NULL},
    {"infected_action_enum", BASE "router = { infected_action = \"bounce\"; };\n", WANT_FAIL, 4,
     "infected_action 'bounce'", NULL},
    {"hold_expiry_action_enum", BASE "router = { hold_expiry_action = \"drop\"; };\n", WANT_FAIL, 4,
     "hold_expiry_action 'drop'", NULL},
    {"hold_retry_order", BASE "router = { hold_retry_min = 600; hold_retry_max = 60; };\n",
     WANT_FAIL, 4, "hold_retry_max must not be less than hold_retry_min", NULL},
    {"scanner_exit_code_twice",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ];\n"
     "  clean_codes = [ 0, 1 ];\n  infected_codes = [ 1 ]; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 4, "both clean and infected", NULL},
    {"scanner_code_range",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ];\n"
     "  clean_codes = [ 0 ];\n  infected_codes = [ 256 ]; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 4, "from 0 to 255", NULL},
    {"scanner_type_enum",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\";\n type = \"magic\"; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 3, "type 'magic' is unknown", NULL},
    {"scanners_not_a_list",
     "spool_dir = \"s\";\nscanners = 1;\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 2, "must be a list of groups", NULL},
    {"scanner_mode_enum",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ];\n"
     "clean_codes = [ 0 ]; infected_codes = [ 1 ];\n mode = \"sometimes\"; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 4, "mode 'sometimes' is unknown (use \"per-attachment\"", NULL},
    {"exec_mode_clamd",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ];\n"
     "clean_codes = [ 0 ]; infected_codes = [ 1 ];\n mode = \"clamd\"; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 4, "unknown for an exec scanner", NULL},
    {"clamd_mode_other",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; type = \"clamd\";\n"
     "addresses = [ \"unix:/x.sock\" ];\n mode = \"per-message\"; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 4, "a clamd scanner has no mode other than", NULL},
    {"clamd_needs_addresses",
     "spool_dir = \"s\";\nscanners = (\n { name = \"c\";\n type = \"clamd\"; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 3, "missing 'addresses'", NULL},
    {"clamd_address_resolved",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; type = \"clamd\";\n"
     "addresses = [ \"unix:x.sock\" ]; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_OK, 0, NULL, conf_clamd_resolved},
    {"every_scanner_backup",
     "spool_dir = \"s\";\nscanners = (\n { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ];\n"
     "clean_codes = [ 0 ]; infected_codes = [ 1 ]; backup = true; } );\n"
     "connectors = ( { name = \"smtp\"; } );\n",
     WANT_FAIL, 2, "every scanner is a backup", NULL},
    {"exec_with_clamd_key", BASE_EXEC_WITH("cache = false;"), WANT_FAIL, 2,
     "are for type \"clamd\" only", NULL},
    {"maildir_needs_path",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; "
     "clean_codes = [ 0 ]; infected_codes = [ 1 ]; } );\n"
     "connectors = ( { name = \"m\";\n type = \"maildir\"; } );\n",
     WANT_FAIL, 3, "a maildir connector needs maildir", NULL},
    {"spool_dir_empty", "spool_dir = \"\";\n" BASE_TAIL, WANT_FAIL, 1,
     "spool_dir must not be empty", NULL},
    {"enum_values",
     BASE "router = { infected_action = \"strip\"; hold_expiry_action = \"deliver\"; };\n"
          "log = { target = \"syslog\"; level = \"error\"; };\n",
     WANT_OK, 0, NULL, conf_enums_read},
    {"connector_type_enum",
     "spool_dir = \"s\";\nscanners = ( { name = \"c\"; argv = [ \"/bin/true\", \"{file}\" ]; "
     "clean_codes = [ 0 ]; infected_codes = [ 1 ]; } );\n"
     "connectors = ( { name = \"smtp\";\n type = \"pigeon\"; } );\n",
     WANT_FAIL, 4, "connector type 'pigeon'", NULL},
};

/* A private directory for the files; removed at the end. */
static char conf_dir[] = "/tmp/test_conftable.XXXXXX";

static int conf_write(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	int r = write_all(fd, text, strlen(text));
	if (close(fd) < 0)
		r = -1;
	return r;
}

static void conf_case_run(const struct conf_case *c)
{
	char path[128], err[2048] = "", where[160];
	snprintf(path, sizeof path, "%s/%s.conf", conf_dir, c->name);
	if (conf_write(path, c->text) < 0) {
		printf("  cannot write %s: %s\n", path, strerror(errno));
		CHECK_ROW("conf", c->name, 0);
		return;
	}
	struct conf *cf = conf_try_load(path, err, sizeof err);
	if (c->want == WANT_OK) {
		if (cf == NULL)
			printf("  error: %s\n", err);
		CHECK_ROW("conf", c->name, cf != NULL && (c->check == NULL || c->check(cf)));
	} else {
		snprintf(where, sizeof where, "%s:%d:", path, c->line);
		if (cf != NULL || strstr(err, where) == NULL || strstr(err, c->hint) == NULL)
			printf("  error: \"%s\"\n  want \"%s\" and \"%s\" in it\n", err, where,
			       c->hint);
		CHECK_ROW("conf", c->name,
		          cf == NULL && strstr(err, where) != NULL && strstr(err, c->hint) != NULL);
	}
	conf_free(cf);
	unlink(path);
}

int main(void)
{
	if (mkdtemp(conf_dir) == NULL) {
		printf("FAIL setup: mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		conf_case_run(&cases[i]);
	if (rmdir(conf_dir) < 0)
		printf("  cannot remove %s: %s\n", conf_dir, strerror(errno));
	return failures ? 1 : 0;
}
