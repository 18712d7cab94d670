/*
 * decide - the routing decision: what the verdicts and the manifest say about a message
 * (deliver, quarantine, hold, banned, unscannable), which connector serves a recipient,
 * which parts are banned, and the escaping every text from outside goes through before a
 * report, a reason, a log line or a notice quotes it. Pure functions of their arguments:
 * no file is read or written here.
 */
#include <ctype.h>
#include <fnmatch.h>
#include <string.h>

#include "router.h"
#include "util.h"

/* Bytes a scanner or a sender chose, as one line of text for people: printable ASCII
 * and the space pass, a backslash and every other byte (CR, LF, ESC, 8-bit) become \xHH,
 * so a report, a reason file or a notice never holds a control byte or a line break that
 * came from outside. At most maxin input bytes; a longer input is cut and ends in "...". */
void router_text(struct buf *out, const char *s, size_t maxin)
{
	text_escape(out, s, strlen(s), maxin);
}

/* A multi-line text (a why) for a report, a reason file or a notice body: like
 * router_text, but its line breaks stay. The router's own lines escape what they quote at
 * the source; this catches any line that did not, so no sink ever holds a CR, an ESC or
 * another control byte, whoever wrote the line. */
void router_text_block(struct buf *out, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 0x20 && c < 0x7f) || c == '\n')
			buf_add(out, &c, 1);
		else
			buf_printf(out, "\\x%02x", c);
	}
}

/* The verdict for one part: infected if any scanner says so; clean if every primary
 * said clean, or if a primary failed and the backups all gave a verdict; else error. */
enum verdict router_part_verdict(const struct verdicts *vs, int part)
{
	int n_primary = 0, primary_err = 0, n_backup = 0, backup_err = 0;
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		if (l->part != part)
			continue;
		if (l->verdict == V_INFECTED)
			return V_INFECTED;
		if (l->backup) {
			n_backup++;
			backup_err += l->verdict != V_CLEAN;
		} else {
			n_primary++;
			primary_err += l->verdict != V_CLEAN;
		}
	}
	if (n_primary > 0 && primary_err == 0)
		return V_CLEAN;
	if (primary_err > 0 && n_backup > 0 && backup_err == 0)
		return V_CLEAN;
	return V_ERROR;
}

/* How a report names a part: its file name (escaped: the sender chose it), or where the
 * splitter found it ("raw, no filename"), or "-" for a part the manifest does not have. */
void router_part_label(const struct manifest_part *p, struct buf *out)
{
	if (p && p->filename[0])
		escape_bytes(out, p->filename, strlen(p->filename), 256);
	else if (p)
		buf_printf(out, "%s, no filename", manifest_found_name(p->found));
	else
		buf_addstr(out, "-");
}

enum outcome router_decide(const struct manifest *m, const struct verdicts *vs, struct buf *why)
{
	int infected = 0, failed = 0;
	for (size_t i = 0; i < vs->n; i++) {
		const struct verdict_line *l = &vs->lines[i];
		if (l->verdict == V_INFECTED) {
			infected = 1;
			const struct manifest_part *p = l->part > 0 && (size_t)l->part <= m->n_parts
			                                    ? &m->parts[l->part - 1]
			                                    : NULL;
			struct buf fn;
			buf_init(&fn);
			router_part_label(p, &fn);
			buf_printf(why, "part %d (%s): ", l->part, buf_cstr(&fn));
			router_text(why, l->virus, 256);
			buf_addstr(why, " found by ");
			router_text(why, l->scanner, 64);
			buf_addstr(why, "\n");
			buf_free(&fn);
		}
		if (l->part < 0 && l->verdict != V_CLEAN) {
			failed = 1;
			if (m->n_unscannable && l->verdict == V_UNSCANNABLE &&
			    strcmp(l->scanner, "splitter") == 0)
				continue; /* a manifest mark: listed from the manifest below */
			buf_printf(why, "message: %s by ", verdict_name(l->verdict));
			router_text(why, l->scanner, 64);
			buf_addstr(why, ": ");
			router_text(why, l->output, 1024);
			buf_addstr(why, "\n");
		}
	}
	if (infected)
		return OUT_QUARANTINE;
	for (size_t i = 0; i < m->n_parts; i++) {
		enum verdict v = router_part_verdict(vs, (int)m->parts[i].index);
		if (v != V_CLEAN) {
			failed = 1;
			buf_printf(why,
			           "part %u: not scanned clean (scanner error, timeout or no "
			           "verdict)\n",
			           m->parts[i].index);
		}
	}
	/* A manifest's unscannable marks are permanent: a retry goes from hold/ back to
	 * scan/, never to the splitter, so it rescans the same parts of the same manifest and
	 * can never cover what the splitter left out. Holding such a message would only
	 * rescan all its parts until max_hold_time: it is quarantined now, and the report
	 * names the limits first. */
	if (m->n_unscannable) {
		struct buf u;
		buf_init(&u);
		for (size_t i = 0; i < m->n_unscannable; i++) {
			buf_addstr(&u,
			           "message: unscannable, not retried (a retry rescans the same "
			           "parts): ");
			router_text(&u, m->unscannable[i], 256);
			buf_addstr(&u, "\n");
		}
		buf_add(&u, why->data, why->len);
		buf_reset(why);
		buf_add(why, u.data, u.len);
		buf_free(&u);
		return OUT_UNSCANNABLE;
	}
	return failed ? OUT_HOLD : OUT_DELIVER;
}

/* The connector for one recipient: the first whose domain patterns match, else default. */
const char *router_connector_for(const struct conf *c, const char *rcpt)
{
	char dom[512];
	envelope_addr_domain(rcpt, dom, sizeof dom);
	for (size_t i = 0; i < c->n_connectors; i++)
		for (char **p = c->connectors[i].domains; *p; p++)
			if (fnmatch(*p, dom, FNM_CASEFOLD) == 0)
				return c->connectors[i].name;
	return c->router.default_connector;
}

/* Banned attachments: by file name extension (the last one, after the trailing dots and
 * spaces Windows ignores) and by content type. Names are the manifest's decoded bytes;
 * they are only compared, never used as paths. Returns how many parts are banned. */
int router_banned(const struct conf_router *rc, const struct manifest *m, struct buf *why,
                  unsigned char *flags)
{
	int n = 0;
	for (size_t i = 0; i < m->n_parts; i++) {
		const struct manifest_part *p = &m->parts[i];
		if (p->found == FOUND_RAW)
			continue; /* the whole message, not an attachment */
		char name[256];
		size_t l = strlen(p->filename);
		if (l >= sizeof name)
			l = sizeof name - 1;
		for (size_t k = 0; k < l; k++)
			name[k] = (char)tolower((unsigned char)p->filename[k]);
		while (l > 0 && (name[l - 1] == '.' || name[l - 1] == ' ' || name[l - 1] == '\t'))
			l--;
		name[l] = '\0';
		const char *rule = NULL, *what = NULL;
		const char *dot = strrchr(name, '.');
		if (dot && dot[1]) {
			for (char **x = rc->banned_extensions; *x && !rule; x++)
				if (strcmp(dot + 1, *x) == 0) {
					/* "invoice.pdf.exe": the first extension is what the user
					 * sees. */
					const char *prev =
					    dot > name ? memrchr(name, '.', (size_t)(dot - name))
					               : NULL;
					rule = prev && dot - prev > 1 ? "double extension"
					                              : "extension";
					what = dot;
				}
		}
		for (char **t = rc->banned_types; *t && !rule; t++)
			if (fnmatch(*t, p->type, FNM_CASEFOLD) == 0) {
				rule = "content type";
				what = p->type;
			}
		if (!rule)
			continue;
		struct buf fn;
		buf_init(&fn);
		escape_bytes(&fn, p->filename, strlen(p->filename), 256);
		buf_printf(why, "part %u (%s): banned %s ", p->index, fn.len ? buf_cstr(&fn) : "-",
		           rule);
		router_text(why, what, 256);
		buf_addstr(why, "\n");
		buf_free(&fn);
		if (flags)
			flags[i] = 1;
		n++;
	}
	return n;
}

void router_viruses(const struct verdicts *vs, struct buf *out)
{
	for (size_t i = 0; i < vs->n; i++) {
		if (vs->lines[i].verdict != V_INFECTED)
			continue;
		int seen = 0;
		for (size_t k = 0; k < i && !seen; k++)
			seen = vs->lines[k].verdict == V_INFECTED &&
			       strcmp(vs->lines[k].virus, vs->lines[i].virus) == 0;
		if (seen)
			continue;
		if (out->len)
			buf_addstr(out, ",");
		escape_bytes(out, vs->lines[i].virus, strlen(vs->lines[i].virus), 200);
	}
}
