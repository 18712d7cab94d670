/*
 * scan_exec - the exec backends of scanner.h: per-attachment (one process per part, as
 * MailEnable does) and per-message (one process for every part of the message).
 *
 * The argv comes from the config's template only: {file} and {dir} become paths made of
 * the spool root and part indexes, a word that is exactly {files} becomes one word per
 * part, and through the scanner broker (scanner_broker_fd >= 0) every file is named by
 * its descriptor, "/dev/fd/N", and {dir} is "." (the scanner's private directory: the
 * message's own is out of its reach). Nothing of the message chooses a path or a size.
 *
 * Each run holds one of the scanner's slots (scanner_slot_take), never passed to the
 * child. A per-message run that says "infected" must name each infected part by the
 * exact word it was given; the parts it does not name are run again without the named
 * ones, and are clean only from a clean run (see scan_exec_per_message).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "scanner.h"
#include "slot.h"
#include "util.h"

#define OUTPUT_EXCERPT 512
/* Output kept per scanner run (per part; per-message runs get more, per part). */
#define SCAN_EXEC_OUTPUT_MAX (64 * 1024)
enum {
	/* per-message: an infected run names its infected parts; the others are scanned
	 * again, without those, until a run exits clean or errs. Each run must name a new
	 * part, and there are at most this many. */
	SCAN_EXEC_PM_ROUNDS = 8,
	SCAN_EXEC_ARGV_RECORD = 1024, /* bytes of a per-message argv kept in each verdict line */
};

/* Word for file i of a run: its path, or through the broker its descriptor's name. */
static char *scan_exec_file_word(size_t i, const char *path)
{
	char fdname[32];
	if (scanner_broker_fd < 0)
		return xstrdup(path);
	broker_file_arg(i, fdname, sizeof fdname);
	return xstrdup(fdname);
}

/* Substitute {file} / {dir} in one argv word. */
static char *scan_exec_word_expand(const char *w, const char *file, const char *dir)
{
	struct buf b;
	buf_init(&b);
	while (*w) {
		if (strncmp(w, "{file}", 6) == 0 && file) {
			buf_addstr(&b, file);
			w += 6;
		} else if (strncmp(w, "{dir}", 5) == 0) {
			buf_addstr(&b, scanner_broker_fd >= 0 ? "." : dir);
			w += 5;
		} else {
			buf_add(&b, w, 1);
			w++;
		}
	}
	buf_cstr(&b);
	return b.data;
}

/* The paths of the files a run scans, in the order scan_exec_argv numbers them: every
 * part of m, or the one file. NULL-terminated; free with scan_exec_argv_free. */
static char **scan_exec_files(const char *dir, const char *file, const struct manifest *m,
                              size_t *n)
{
	size_t k = m ? m->n_parts : file ? 1 : 0;
	char **v = xcalloc(k + 1, sizeof(char *));
	for (size_t i = 0; m && i < m->n_parts; i++) {
		char name[16];
		manifest_part_name(m->parts[i].index, name);
		v[i] = xasprintf("%s/%s", dir, name);
	}
	if (!m && file)
		v[0] = xstrdup(file);
	*n = k;
	return v;
}

/* Build the argv: every word expanded; a word that is exactly {files} becomes one word per
 * part of m (or the one file when m is NULL: the canary). Paths come from the spool root
 * and part indexes only, never from the message; through the broker, from the file's
 * position only (scan_exec_file_word). */
static char **scan_exec_argv(const struct conf_scanner *sc, const char *dir, const char *file,
                             const struct manifest *m)
{
	size_t n = 0, cap = 8;
	char **v = xmalloc(cap * sizeof(char *));
	char *file_word = file ? scan_exec_file_word(0, file) : NULL;
	for (char **w = sc->argv; *w; w++) {
		if (strcmp(*w, "{files}") == 0 && m) {
			for (size_t i = 0; i < m->n_parts; i++) {
				char name[16];
				manifest_part_name(m->parts[i].index, name);
				if (n + 2 > cap)
					v = xrealloc(v, (cap *= 2) * sizeof(char *));
				char *path = xasprintf("%s/%s", dir, name);
				v[n++] = scan_exec_file_word(i, path);
				free(path);
			}
			continue;
		}
		if (strcmp(*w, "{files}") == 0 && file) {
			/* The canary: per-message scanners get their one test file. */
			if (n + 2 > cap)
				v = xrealloc(v, (cap *= 2) * sizeof(char *));
			v[n++] = xstrdup(file_word);
			continue;
		}
		if (n + 2 > cap)
			v = xrealloc(v, (cap *= 2) * sizeof(char *));
		v[n++] = scan_exec_word_expand(*w, file_word, dir);
	}
	v[n] = NULL;
	free(file_word);
	return v;
}

static void scan_exec_argv_free(char **v)
{
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

/* The argv word of each part of sub, in order (as scan_exec_argv makes them for {files}). */
static char **scan_exec_files_words(const char *dir, const struct manifest *sub)
{
	size_t n;
	char **v = scan_exec_files(dir, NULL, sub, &n);
	for (size_t k = 0; k < n; k++) {
		char *w = scan_exec_file_word(k, v[k]);
		free(v[k]);
		v[k] = w;
	}
	return v;
}

static void scan_exec_argv_join(char **v, struct buf *out)
{
	for (char **p = v; *p; p++) {
		if (p != v)
			buf_addstr(out, " ");
		buf_addstr(out, *p);
	}
}

static void scan_exec_opts(const struct conf_scanner *sc, const char *dir, size_t output_max,
                           char **files, struct exec_opts *o)
{
	exec_opts_init(o);
	o->cwd = sc->workdir ? sc->workdir : dir;
	if (scanner_broker_fd >= 0) {
		/* Through the broker: the files go as descriptors, and the scanner's cwd is
		 * its own private directory unless workdir names one. */
		o->broker_fd = scanner_broker_fd;
		o->cwd = sc->workdir;
		o->files = (const char *const *)files;
		for (o->n_files = 0; files && files[o->n_files]; o->n_files++)
			;
	}
	o->timeout_ms = sc->timeout * 1000;
	o->output_max = output_max;
	o->rlimit_as = sc->rlimit_as;
	o->rlimit_cpu = sc->rlimit_cpu;
	o->rlimit_nofile = sc->rlimit_nofile;
	/* keep_fd stays -1: the slot is the runner's, never the child's (slot.h). */
}

/* Run one scanner process while holding one of its slots. The slot descriptor is
 * close-on-exec and handed to nobody: a grandchild that leaves the process group cannot
 * keep it. It is released only once exec_run has reaped the child and killed its group,
 * so the slots still bound the scanners running at once; if the runner dies, the child
 * dies with it (PR_SET_PDEATHSIG) and the kernel drops the lock. No free slot within
 * scanner_runner.slot_wait: res says not-started, which scanner_exit_map makes an error. */
static void scan_exec_run(struct stage *st, const struct conf_scanner *sc, char **argv,
                          char **files, const char *dir, const char *qid, size_t output_max,
                          struct exec_result *res)
{
	struct exec_opts o;
	char why[300];
	int slot = scanner_slot_take(st, sc, qid, why, sizeof why);
	if (slot < 0) {
		memset(res, 0, sizeof *res);
		buf_init(&res->output);
		res->not_started = 1;
		buf_addstr(&res->output, why);
		return;
	}
	scan_exec_opts(sc, dir, output_max, files, &o);
	if (exec_run(argv, &o, res) < 0)
		die_temp(qid, "cannot run scanner %s: %s", sc->name, strerror(errno));
	slot_release(slot);
}

static void scan_exec_excerpt(const struct exec_result *res, char *out, size_t len)
{
	struct buf b;
	buf_init(&b);
	if (res->output_truncated)
		buf_printf(&b, "output truncated (over %zu bytes, or held open after exit): ",
		           res->output.len);
	buf_add(&b, res->output.data ? res->output.data : "", res->output.len);
	size_t n = b.len < len - 1 ? b.len : len - 1;
	memcpy(out, b.data ? b.data : "", n);
	out[n] = '\0';
	buf_free(&b);
}

/* One part, one process: the first part still in todo. */
static int scan_exec_per_attachment(struct scanner *s, struct scan_pass *p)
{
	const struct conf_scanner *sc = s->conf;
	const struct manifest *m = p->m;
	size_t i = 0;
	while (i < m->n_parts && !p->todo[i])
		i++;
	if (i == m->n_parts)
		return 1;
	char name[16], exits[64], virus[256], excerpt[OUTPUT_EXCERPT];
	struct exec_result res;
	struct buf av;
	manifest_part_name(m->parts[i].index, name);
	char *file = xasprintf("%s/%s", p->dir, name);
	char **argv = scan_exec_argv(sc, p->dir, file, NULL);
	size_t nf;
	char **files = scan_exec_files(p->dir, file, NULL, &nf);
	scan_exec_run(p->st, sc, argv, files, p->dir, p->qid, SCAN_EXEC_OUTPUT_MAX, &res);
	scan_exec_argv_free(files);
	scanner_observe(sc, res.ms);
	enum verdict v = scanner_exit_map(sc, &res);
	exec_result_describe(&res, exits, sizeof exits);
	virus[0] = '\0';
	if (v == V_INFECTED) {
		scanner_virus_name(&s->rx, s->has_rx, buf_cstr(&res.output), virus, sizeof virus);
		if (!virus[0])
			snprintf(virus, sizeof virus, "unknown");
	}
	scan_exec_excerpt(&res, excerpt, sizeof excerpt);
	buf_init(&av);
	scan_exec_argv_join(argv, &av);
	scan_pass_add(p, s, (int)m->parts[i].index, v, virus, exits, res.ms, s->version,
	              buf_cstr(&av), excerpt, 1);
	p->todo[i] = 0;
	buf_free(&av);
	exec_result_free(&res);
	scan_exec_argv_free(argv);
	free(file);
	for (i++; i < m->n_parts; i++)
		if (p->todo[i])
			return 0;
	return 1;
}

/* Which parts an infected per-message run named. A line names a part only when it starts
 * with exactly the word we passed for it (dir "/" NNNN.ATT, or through the broker
 * "/dev/fd/N") and a ':' right after: no prefix, substring or basename match, so
 * "<dir>/0001.ATT.x:", "/elsewhere/0001.ATT:", "0001.ATT:" or "/dev/fd/30:" for
 * "/dev/fd/3" name nothing. The virus name comes from that same line (virus_regex).
 * sub: the parts this run was given, in argv order (the parts in todo). Fills names[i]
 * for the parts in todo; returns how many it named. */
static size_t scan_exec_attribute(const struct scanner *s, const char *out,
                                  const struct scan_pass *p, const struct manifest *sub,
                                  char (*names)[256])
{
	const struct manifest *m = p->m;
	size_t named = 0;
	char **words = scan_exec_files_words(p->dir, sub);
	const char *line = out;
	while (*line) {
		const char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		for (size_t k = 0, i = 0; k < sub->n_parts; k++) {
			size_t wl = strlen(words[k]);
			if (ll <= wl || memcmp(line, words[k], wl) != 0 || line[wl] != ':')
				continue;
			while (i < m->n_parts && m->parts[i].index != sub->parts[k].index)
				i++;
			if (i == m->n_parts || !p->todo[i] || names[i][0])
				break;
			char *l = xstrndup(line, ll);
			scanner_virus_name(&s->rx, s->has_rx, l, names[i], sizeof names[i]);
			free(l);
			if (names[i][0])
				named++;
			break;
		}
		if (!nl)
			break;
		line = nl + 1;
	}
	scan_exec_argv_free(words);
	return named;
}

/* The verdict lines of one per-message run: a clean or error run gives every part in
 * todo its verdict; an infected one gives the parts it named theirs, and leaves the
 * others in todo when again is set (run once more without the named ones), else makes
 * them errors. Returns how many are left in todo. */
static size_t scan_exec_pm_record(struct scanner *s, struct scan_pass *p, enum verdict v,
                                  char (*names)[256], size_t named, int again,
                                  const struct exec_result *res, const char *exits,
                                  const char *argv, const char *excerpt)
{
	const struct manifest *m = p->m;
	size_t left = 0;
	for (size_t i = 0; i < m->n_parts; i++) {
		enum verdict pv = v;
		const char *virus = "", *why = excerpt;
		if (!p->todo[i])
			continue;
		if (v == V_INFECTED) {
			if (names[i][0]) {
				virus = names[i];
			} else if (again) {
				left++;
				continue; /* scanned again, without the parts named this round */
			} else {
				pv = V_ERROR;
				why = named
				          ? "an infected run did not name this part, nor did the "
				            "last run"
				          : "an infected run named none of the parts it was given";
			}
		}
		p->todo[i] = 0;
		scan_pass_add(p, s, (int)m->parts[i].index, pv, virus, exits, res->ms, s->version,
		              argv, why, 1);
	}
	return left;
}

/* One process for the parts of the message still in todo. Clean only comes from a clean
 * exit over exactly those parts; an infected exit makes the parts it names infected, and
 * the others are run again on their own (next round), because "not named" is not
 * "clean": the line naming them may be lost, cut or garbled. A round that names none of
 * them, or the last round, makes them errors. */
static int scan_exec_per_message(struct scanner *s, struct scan_pass *p)
{
	const struct conf_scanner *sc = s->conf;
	const struct manifest *m = p->m;
	char exits[64], excerpt[OUTPUT_EXCERPT];
	struct exec_result res;
	struct buf av;
	struct manifest sub = {0};
	sub.parts = xcalloc(m->n_parts ? m->n_parts : 1, sizeof *sub.parts);
	for (size_t i = 0; i < m->n_parts; i++)
		if (p->todo[i])
			sub.parts[sub.n_parts++] = m->parts[i];
	char **argv = scan_exec_argv(sc, p->dir, NULL, &sub);
	size_t nf;
	char **files = scan_exec_files(p->dir, NULL, &sub, &nf);
	/* One line per part is the usual answer: room for that, with the bound coming from
	 * the splitter's max_parts (config), not from the message. */
	size_t out_max = SCAN_EXEC_OUTPUT_MAX + sub.n_parts * (strlen(p->dir) + 16 + 256);
	scan_exec_run(p->st, sc, argv, files, p->dir, p->qid, out_max, &res);
	scanner_observe(sc, res.ms);
	enum verdict v = scanner_exit_map(sc, &res);
	exec_result_describe(&res, exits, sizeof exits);
	scan_exec_excerpt(&res, excerpt, sizeof excerpt);
	buf_init(&av);
	scan_exec_argv_join(argv, &av);
	if (av.len > SCAN_EXEC_ARGV_RECORD) {
		av.len = SCAN_EXEC_ARGV_RECORD;
		buf_printf(&av, " ... (%zu files)", sub.n_parts);
	}
	p->rounds++;
	size_t named = 0;
	char(*names)[256] = xcalloc(m->n_parts ? m->n_parts : 1, sizeof *names);
	if (v == V_INFECTED)
		named = scan_exec_attribute(s, buf_cstr(&res.output), p, &sub, names);
	int again =
	    v == V_INFECTED && named > 0 && named < sub.n_parts && p->rounds < SCAN_EXEC_PM_ROUNDS;
	size_t left =
	    scan_exec_pm_record(s, p, v, names, named, again, &res, exits, buf_cstr(&av), excerpt);
	free(names);
	free(sub.parts);
	scan_exec_argv_free(files);
	buf_free(&av);
	exec_result_free(&res);
	scan_exec_argv_free(argv);
	return left == 0;
}

/* The canary's check of one file. Through the broker the canary's files go as
 * descriptors, as a part would; a missing one cannot be opened and goes as a closed
 * number: still a missing file. */
static void scan_exec_check(struct scanner *s, struct stage *st, const char *dir, int dirfd,
                            const char *file, const char *addr, struct scanner_probe *out)
{
	const struct conf_scanner *sc = s->conf;
	struct exec_result res;
	struct buf esc;
	char exits[64];
	(void)dirfd;
	(void)addr;
	char *path = xasprintf("%s/%s", dir, file);
	char **argv = scan_exec_argv(sc, dir, path, NULL);
	size_t nf;
	char **files = scan_exec_files(dir, path, NULL, &nf);
	scan_exec_run(st, sc, argv, files, dir, NULL, SCAN_EXEC_OUTPUT_MAX, &res);
	scan_exec_argv_free(files);
	out->verdict = scanner_exit_map(sc, &res);
	out->timed_out = res.timed_out;
	exec_result_describe(&res, exits, sizeof exits);
	scanner_virus_name(&s->rx, s->has_rx, buf_cstr(&res.output), out->virus, sizeof out->virus);
	buf_init(&esc);
	escape_bytes(&esc, res.output.data ? res.output.data : "", res.output.len, 120);
	bsnprintf(out->detail, sizeof out->detail, "exit=%s output=%s", exits, buf_cstr(&esc));
	buf_free(&esc);
	exec_result_free(&res);
	scan_exec_argv_free(argv);
	free(path);
}

/* The scanner's version line (version_argv), for the verdict record and the canary's
 * change check. */
static void scan_exec_version(const struct scanner *s, char *out, size_t len)
{
	const struct conf_scanner *sc = s->conf;
	snprintf(out, len, "unknown");
	if (sc->version_argv == NULL || sc->version_argv[0] == NULL)
		return;
	struct exec_opts o;
	struct exec_result res;
	exec_opts_init(&o);
	o.timeout_ms = 30000;
	o.output_max = 1024;
	o.broker_fd = scanner_broker_fd; /* the scanner's program runs as its user only */
	if (exec_run(sc->version_argv, &o, &res) == 0 && res.exited && res.exit_code == 0 &&
	    res.output.len) {
		const char *txt = buf_cstr(&res.output);
		size_t l = strcspn(txt, "\n");
		if (l >= len)
			l = len - 1;
		memcpy(out, txt, l);
		out[l] = '\0';
	}
	exec_result_free(&res);
}

const struct scanner_ops scanner_ops_per_attachment = {
    .mode = "per-attachment",
    .scan = scan_exec_per_attachment,
    .check = scan_exec_check,
    .version = scan_exec_version,
    .checks_missing = 1,
};

const struct scanner_ops scanner_ops_per_message = {
    .mode = "per-message",
    .scan = scan_exec_per_message,
    .check = scan_exec_check,
    .version = scan_exec_version,
    .checks_missing = 1,
};
