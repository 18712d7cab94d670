/*
 * manifest - see manifest.h and docs/MANIFEST.md.
 */
#include "manifest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "entry_names.h"
#include "log.h"
#include "util.h"

#define MANIFEST_MAX_BYTES (64u << 20)

static const char *found_names[] = {
    "leaf", "preamble", "epilogue", "embedded-uuencode", "embedded-yenc", "embedded-binhex", "raw"};

const char *manifest_found_name(enum part_found f)
{
	if ((unsigned)f >= ARRAY_LEN(found_names))
		log_panic("manifest_found_name: bad part kind %d", (int)f);
	return found_names[f];
}

void manifest_init(struct manifest *m)
{
	memset(m, 0, sizeof *m);
}

void manifest_free(struct manifest *m)
{
	for (size_t i = 0; i < m->n_parts; i++) {
		struct manifest_part *p = &m->parts[i];
		free(p->path);
		free(p->type);
		free(p->charset);
		free(p->cte);
		free(p->filename);
	}
	free(m->parts);
	for (size_t i = 0; i < m->n_unscannable; i++)
		free(m->unscannable[i]);
	free(m->unscannable);
	manifest_init(m);
}

struct manifest_part *manifest_add(struct manifest *m, const char *path, enum part_found found,
                                   const char *type, const char *charset, const char *cte,
                                   const char *filename, size_t filename_len)
{
	m->parts = xrealloc(m->parts, (m->n_parts + 1) * sizeof *m->parts);
	struct manifest_part *p = &m->parts[m->n_parts];
	memset(p, 0, sizeof *p);
	p->index = (unsigned)m->n_parts + 1;
	p->path = xstrdup(path ? path : "");
	p->found = found;
	p->type = xstrdup(type ? type : "");
	p->charset = xstrdup(charset ? charset : "");
	p->cte = xstrdup(cte ? cte : "");
	p->filename = filename ? xstrndup(filename, filename_len) : xstrdup("");
	m->n_parts++;
	return p;
}

void manifest_add_unscannable(struct manifest *m, const char *reason)
{
	for (size_t i = 0; i < m->n_unscannable; i++)
		if (strcmp(m->unscannable[i], reason) == 0)
			return;
	m->unscannable = xrealloc(m->unscannable, (m->n_unscannable + 1) * sizeof(char *));
	m->unscannable[m->n_unscannable++] = xstrdup(reason);
}

void manifest_part_name(unsigned index, char out[16])
{
	snprintf(out, 16, "%04u" ENTRY_PART_SUFFIX, index);
}

void manifest_format(const struct manifest *m, struct buf *out)
{
	for (size_t i = 0; i < m->n_parts; i++) {
		const struct manifest_part *p = &m->parts[i];
		buf_printf(out, "part %u", p->index);
		kv_addstr(out, "path", p->path);
		kv_addstr(out, "found", manifest_found_name(p->found));
		kv_addstr(out, "type", p->type);
		kv_addstr(out, "charset", p->charset);
		kv_addstr(out, "cte", p->cte);
		kv_add(out, "filename", p->filename, strlen(p->filename));
		buf_printf(out, " size=%llu sha256=%s", (unsigned long long)p->size,
		           p->sha256[0] ? p->sha256 : "-");
		/* Optional, at the end: readers that do not know them skip unknown keys. */
		if (p->has_entity)
			buf_printf(out, " entity_start=%llu entity_end=%llu entity_sha256=%s",
			           (unsigned long long)p->entity_start,
			           (unsigned long long)p->entity_end, p->entity_sha256);
		buf_addstr(out, "\n");
	}
	for (size_t i = 0; i < m->n_unscannable; i++) {
		buf_addstr(out, "unscannable ");
		escape_bytes(out, m->unscannable[i], strlen(m->unscannable[i]), 4096);
		buf_addstr(out, "\n");
	}
	buf_printf(out, "end %zu\n", m->n_parts);
}

/* 64 lower-case hex digits. */
static int manifest_sha_valid(const char *s)
{
	size_t i;
	for (i = 0; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return i == 64;
}

static int manifest_parse_part(struct manifest *m, const char *line, struct buf *v)
{
	uint64_t idx, size;
	char num[32];
	const char *sp = strchr(line, ' ');
	size_t nl = sp ? (size_t)(sp - line) : strlen(line);
	if (nl == 0 || nl >= sizeof num)
		return -1;
	memcpy(num, line, nl);
	num[nl] = '\0';
	if (parse_u64(num, &idx) < 0 || idx != m->n_parts + 1)
		return -1;
	char *path = NULL, *type = NULL, *charset = NULL, *cte = NULL;
	int rc = -1;
	enum part_found found = FOUND_LEAF;
	if (kv_find(line, "path", v) < 0)
		goto out;
	path = xstrdup(buf_cstr(v));
	if (kv_find(line, "found", v) < 0)
		goto out;
	size_t f;
	for (f = 0; f < ARRAY_LEN(found_names); f++)
		if (strcmp(found_names[f], buf_cstr(v)) == 0)
			break;
	if (f == ARRAY_LEN(found_names))
		goto out;
	found = (enum part_found)f;
	if (kv_find(line, "type", v) < 0)
		goto out;
	type = xstrdup(buf_cstr(v));
	if (kv_find(line, "charset", v) < 0)
		goto out;
	charset = xstrdup(buf_cstr(v));
	if (kv_find(line, "cte", v) < 0)
		goto out;
	cte = xstrdup(buf_cstr(v));
	if (kv_find(line, "filename", v) < 0)
		goto out;
	struct manifest_part *p =
	    manifest_add(m, path, found, type, charset, cte, v->data ? v->data : "", v->len);
	if (kv_find(line, "size", v) < 0 || parse_u64(buf_cstr(v), &size) < 0)
		goto out;
	p->size = size;
	if (kv_find(line, "sha256", v) < 0 || v->len >= sizeof p->sha256)
		goto out;
	if (strcmp(buf_cstr(v), "-") != 0)
		memcpy(p->sha256, v->data, v->len + 1);
	/* The entity range is optional (absent: the part cannot be cut out), but all three
	 * fields or none, and well-formed: a half range is a malformed manifest. */
	int has_s = kv_find(line, "entity_start", v) == 0;
	if (has_s && parse_u64(buf_cstr(v), &p->entity_start) < 0)
		goto out;
	int has_e = kv_find(line, "entity_end", v) == 0;
	if (has_e && parse_u64(buf_cstr(v), &p->entity_end) < 0)
		goto out;
	int has_h = kv_find(line, "entity_sha256", v) == 0;
	if (has_h && !manifest_sha_valid(buf_cstr(v)))
		goto out;
	if (has_h)
		memcpy(p->entity_sha256, v->data, 65);
	if (has_s != has_e || has_s != has_h || (has_s && p->entity_start >= p->entity_end))
		goto out;
	p->has_entity = has_s;
	rc = 0;
out:
	free(path);
	free(type);
	free(charset);
	free(cte);
	return rc;
}

int manifest_read_at(int dirfd, struct manifest *m, char *reason, size_t rlen)
{
	return manifest_read_owned_at(dirfd, m, (uid_t)-1, reason, rlen);
}

int manifest_read_owned_at(int dirfd, struct manifest *m, uid_t owner, char *reason, size_t rlen)
{
	struct buf b, v;
	buf_init(&b);
	buf_init(&v);
	manifest_init(m);
	int rc = -1;
	uid_t found = (uid_t)-1;
	if (read_file_owned_at(dirfd, ENTRY_MANIFEST, &b, MANIFEST_MAX_BYTES, owner, &found) < 0) {
		read_file_owned_reason(reason, rlen, ENTRY_MANIFEST, owner, found, errno);
		goto out;
	}
	char *line = b.data;
	while (line && *line) {
		char *nl = strchr(line, '\n');
		if (nl == NULL)
			break; /* an unterminated last line means the file is incomplete */
		*nl = '\0';
		if (strncmp(line, "part ", 5) == 0) {
			if (manifest_parse_part(m, line + 5, &v) < 0) {
				snprintf(reason, rlen, "manifest: malformed part line %zu",
				         m->n_parts + 1);
				goto out;
			}
		} else if (strncmp(line, "unscannable ", 12) == 0) {
			buf_reset(&v);
			if (unescape_bytes(&v, line + 12) < 0) {
				snprintf(reason, rlen, "manifest: malformed unscannable line");
				goto out;
			}
			manifest_add_unscannable(m, buf_cstr(&v));
		} else if (strncmp(line, "end ", 4) == 0) {
			uint64_t count;
			if (parse_u64(line + 4, &count) < 0 || count != m->n_parts) {
				snprintf(reason, rlen, "manifest: end count does not match");
				goto out;
			}
			/* The file is written whole and renamed into place: anything after the
			 * end line is not ours, and the file counts as incomplete (absent). */
			if ((size_t)(nl + 1 - b.data) != b.len) {
				snprintf(reason, rlen,
				         "manifest: incomplete (data after the end line)");
				goto out;
			}
			rc = 0;
			goto out;
		} else {
			snprintf(reason, rlen, "manifest: unknown line");
			goto out;
		}
		line = nl + 1;
	}
	snprintf(reason, rlen, "manifest: incomplete (no end line)");
out:
	if (rc < 0)
		manifest_free(m);
	buf_free(&b);
	buf_free(&v);
	return rc;
}
