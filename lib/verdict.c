/*
 * verdict - see verdict.h.
 */
#include "verdict.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "entry_names.h"
#include "log.h"
#include "util.h"

static const char *verdict_names[] = {"clean", "infected", "error", "unscannable"};

const char *verdict_name(enum verdict v)
{
	if ((unsigned)v >= ARRAY_LEN(verdict_names))
		log_panic("verdict_name: bad verdict %d", (int)v);
	return verdict_names[v];
}

int verdict_parse_name(const char *s, enum verdict *v)
{
	for (size_t i = 0; i < ARRAY_LEN(verdict_names); i++)
		if (strcmp(s, verdict_names[i]) == 0) {
			*v = (enum verdict)i;
			return 0;
		}
	return -1;
}

void verdicts_init(struct verdicts *vs)
{
	vs->lines = NULL;
	vs->n = 0;
	vs->qid = NULL;
	vs->msg_sha256 = NULL;
}

void verdicts_free(struct verdicts *vs)
{
	for (size_t i = 0; i < vs->n; i++) {
		struct verdict_line *l = &vs->lines[i];
		free(l->scanner);
		free(l->virus);
		free(l->exit);
		free(l->version);
		free(l->argv);
		free(l->output);
	}
	free(vs->lines);
	free(vs->qid);
	free(vs->msg_sha256);
	verdicts_init(vs);
}

struct verdict_line *verdicts_add(struct verdicts *vs, int part, const char *scanner,
                                  enum verdict v, const char *virus, const char *exit, long ms,
                                  const char *version, const char *argv, const char *output)
{
	vs->lines = xrealloc(vs->lines, (vs->n + 1) * sizeof *vs->lines);
	struct verdict_line *l = &vs->lines[vs->n++];
	l->part = part;
	l->scanner = xstrdup(scanner ? scanner : "");
	l->verdict = v;
	l->virus = xstrdup(virus ? virus : "");
	l->exit = xstrdup(exit ? exit : "");
	l->ms = ms;
	l->version = xstrdup(version ? version : "");
	l->argv = xstrdup(argv ? argv : "");
	l->output = xstrdup(output ? output : "");
	l->backup = 0;
	return l;
}

void verdicts_format(const struct verdicts *vs, struct buf *out)
{
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		if (l->part < 0)
			buf_addstr(out, "scan part=-");
		else
			buf_printf(out, "scan part=%d", l->part);
		kv_addstr(out, "scanner", l->scanner);
		kv_addstr(out, "verdict", verdict_name(l->verdict));
		kv_addstr(out, "virus", l->virus);
		kv_addstr(out, "exit", l->exit);
		buf_printf(out, " ms=%ld backup=%d", l->ms, l->backup);
		kv_addstr(out, "version", l->version);
		kv_addstr(out, "argv", l->argv);
		kv_addstr(out, "output", l->output);
		buf_addstr(out, "\n");
	}
	if (vs->qid) {
		buf_addstr(out, "message");
		kv_addstr(out, "qid", vs->qid);
		if (vs->msg_sha256)
			kv_addstr(out, "sha256", vs->msg_sha256);
		buf_addstr(out, "\n");
	}
	buf_printf(out, "end %zu\n", vs->n);
}

int verdicts_read_at(int dirfd, struct verdicts *vs, char *reason, size_t rlen)
{
	return verdicts_read_owned_at(dirfd, vs, (uid_t)-1, reason, rlen);
}

int verdicts_read_owned_at(int dirfd, struct verdicts *vs, uid_t owner, char *reason, size_t rlen)
{
	struct buf b, v;
	buf_init(&b);
	buf_init(&v);
	verdicts_init(vs);
	int rc = -1;
	char *scanner = NULL, *virus = NULL, *ex = NULL, *version = NULL, *argv = NULL;
	uid_t found = (uid_t)-1;
	if (read_file_owned_at(dirfd, ENTRY_VERDICTS, &b, 64u << 20, owner, &found) < 0) {
		read_file_owned_reason(reason, rlen, ENTRY_VERDICTS, owner, found, errno);
		goto out;
	}
	char *line = b.data;
	while (line && *line) {
		char *nl = strchr(line, '\n');
		if (nl == NULL)
			break;
		*nl = '\0';
		if (strncmp(line, "end ", 4) == 0) {
			uint64_t count;
			if (parse_u64(line + 4, &count) < 0 || count != vs->n) {
				snprintf(reason, rlen, "verdicts: end count does not match");
				goto out;
			}
			/* As for the manifest: bytes after the end line make the file
			 * incomplete, so it counts as absent (fail closed: hold). */
			if ((size_t)(nl + 1 - b.data) != b.len) {
				snprintf(reason, rlen,
				         "verdicts: incomplete (data after the end line)");
				goto out;
			}
			rc = 0;
			goto out;
		}
		if (strncmp(line, "message ", 8) == 0) {
			if (vs->qid || kv_find(line, "qid", &v) < 0)
				goto malformed;
			vs->qid = xstrdup(buf_cstr(&v));
			if (kv_find(line, "sha256", &v) == 0) {
				if (v.len != 64 || strspn(buf_cstr(&v), "0123456789abcdef") != 64)
					goto malformed;
				vs->msg_sha256 = xstrdup(buf_cstr(&v));
			}
			line = nl + 1;
			continue;
		}
		if (strncmp(line, "scan ", 5) != 0)
			goto malformed;
		int part = -1;
		uint64_t ms = 0, backup = 0;
		enum verdict vd;
		if (kv_find(line, "part", &v) < 0)
			goto malformed;
		if (strcmp(buf_cstr(&v), "-") != 0) {
			uint64_t p;
			if (parse_u64(v.data, &p) < 0 || p > 1000000)
				goto malformed;
			part = (int)p;
		}
#define TAKE(key, var)                                                                             \
	if (kv_find(line, key, &v) < 0)                                                            \
		goto malformed;                                                                    \
	var = xstrdup(buf_cstr(&v));
		TAKE("scanner", scanner)
		TAKE("virus", virus)
		TAKE("exit", ex)
		TAKE("version", version)
		TAKE("argv", argv)
#undef TAKE
		if (kv_find(line, "verdict", &v) < 0 || verdict_parse_name(buf_cstr(&v), &vd) < 0)
			goto malformed;
		if (kv_find(line, "ms", &v) < 0 || parse_u64(buf_cstr(&v), &ms) < 0)
			goto malformed;
		if (kv_find(line, "backup", &v) < 0 || parse_u64(buf_cstr(&v), &backup) < 0)
			goto malformed;
		if (kv_find(line, "output", &v) < 0)
			goto malformed;
		struct verdict_line *l = verdicts_add(vs, part, scanner, vd, virus, ex, (long)ms,
		                                      version, argv, buf_cstr(&v));
		l->backup = backup ? 1 : 0;
		free(scanner);
		free(virus);
		free(ex);
		free(version);
		free(argv);
		scanner = virus = ex = version = argv = NULL;
		line = nl + 1;
	}
	snprintf(reason, rlen, "verdicts: incomplete (no end line)");
	goto out;
malformed:
	snprintf(reason, rlen, "verdicts: malformed line %zu", vs->n + 1);
out:
	free(scanner);
	free(virus);
	free(ex);
	free(version);
	free(argv);
	if (rc < 0)
		verdicts_free(vs);
	buf_free(&b);
	buf_free(&v);
	return rc;
}
