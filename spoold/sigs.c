/*
 * sigs - settings signatures: on SIGHUP spoold restarts only the stages whose settings
 * changed (all of them when a shared setting changed).
 *
 * sig_compute reads the config file again with libconfig (after conf_try_load has
 * validated it) and gives one canonical text per stage, of the top-level settings that
 * stage reads (sig_keys), and one of the shared settings, read by all (every other key
 * but the ones only spoold uses). Comparing the texts of two loads tells which stages
 * must restart.
 *
 * DIAGNOSTICS
 *   sig_compute returns -1 when the file cannot be read or parsed now (the caller then
 *   takes everything as changed); allocation failures die (xmalloc).
 */
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "log.h"
#include "spoold.h"
#include "util.h"

/* A signature is the canonical text of the config settings a stage reads, taken from the
 * file with libconfig after conf_try_load has validated it. Working on the parsed file
 * rather than on struct conf means a key added to conf.c later is covered without
 * touching spoold. */
static void sig_setting(struct buf *b, const config_setting_t *s)
{
	const char *name = config_setting_name(s);
	if (name)
		kv_addstr(b, "", name);
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
		buf_printf(b, "=i%d", config_setting_get_int(s));
		break;
	case CONFIG_TYPE_INT64:
		buf_printf(b, "=l%lld", (long long)config_setting_get_int64(s));
		break;
	case CONFIG_TYPE_FLOAT:
		buf_printf(b, "=f%.17g", config_setting_get_float(s));
		break;
	case CONFIG_TYPE_BOOL:
		buf_printf(b, "=b%d", config_setting_get_bool(s));
		break;
	case CONFIG_TYPE_STRING: {
		const char *v = config_setting_get_string(s);
		buf_addstr(b, "=s");
		escape_bytes(b, v, strlen(v), 1 << 20);
		break;
	}
	default: /* group, list, array */
		buf_addstr(b, "{");
		for (int i = 0; i < config_setting_length(s); i++)
			sig_setting(b, config_setting_get_elem(s, (unsigned)i));
		buf_addstr(b, "}");
		break;
	}
}

/* Top-level keys each stage reads; every other key is shared (read by all), except the
 * ones only spoold itself uses. */
static const char *const sig_keys[N_STAGES][4] = {
    {"splitter", NULL},
    {"scanner_runner", "scanners", "canary_interval", NULL},
    {"router", "connectors", "scanners", NULL},
    {"connectors", NULL},
    {"lmtp", NULL},
    {NULL}}; /* the exporter reads `fleet`, which every stage shares */
static const char *const sig_spoold_only[] = {"metrics", "control_group", NULL};

static int sig_in(const char *const *list, const char *name)
{
	for (size_t i = 0; list[i]; i++)
		if (strcmp(list[i], name) == 0)
			return 1;
	return 0;
}

/* Signatures of the shared part (index N_STAGES) and of each stage, into out[]. 0, or -1
 * when the file cannot be read now (then everything counts as changed). */
int sig_compute(const char *path, char *out[N_STAGES + 1])
{
	config_t cfg;
	config_init(&cfg);
	for (int i = 0; i <= N_STAGES; i++)
		out[i] = NULL;
	if (config_read_file(&cfg, path) != CONFIG_TRUE) {
		config_destroy(&cfg);
		return -1;
	}
	config_setting_t *root = config_root_setting(&cfg);
	struct buf b[N_STAGES + 1];
	for (int i = 0; i <= N_STAGES; i++)
		buf_init(&b[i]);
	for (int k = 0; k < config_setting_length(root); k++) {
		config_setting_t *s = config_setting_get_elem(root, (unsigned)k);
		const char *name = config_setting_name(s);
		int mine = 0;
		for (int st = 0; st < N_STAGES; st++)
			if (sig_in(sig_keys[st], name)) {
				sig_setting(&b[st], s);
				mine = 1;
			}
		if (!mine && !sig_in(sig_spoold_only, name))
			sig_setting(&b[N_STAGES], s);
	}
	for (int i = 0; i <= N_STAGES; i++) {
		buf_cstr(&b[i]);
		out[i] = b[i].data;
	}
	config_destroy(&cfg);
	return 0;
}
