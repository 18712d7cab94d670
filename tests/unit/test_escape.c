// links:
/*
 * test_escape - unit test of the escapers, as tables of cases: escape_bytes (spool files,
 * log lines), text_escape (text people read), json_escape, unescape_bytes, kv_add /
 * kv_find (lib/escape.c) and metrics_label_escape (lib/metrics.c).
 *
 * What they promise: an escaped value never holds a byte its format reserves (a space or
 * '=' in a k=v token, a line break or a control byte anywhere, a quote in JSON or a
 * Prometheus label), hostile bytes included; input beyond the bound is cut and marked;
 * unescape_bytes gives back exactly what escape_bytes was given, and rejects malformed
 * escapes.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "metrics.h"
#include "util.h"

enum escaper { ESC_BYTES, ESC_TEXT, ESC_JSON };

struct escape_case {
	const char *name;
	enum escaper how;
	const char *in;
	size_t len;   /* bytes of in (NULs included) */
	size_t maxin; /* escape_bytes, text_escape: the input bound */
	const char *want;
};

#define S(s) s, sizeof s - 1

static const struct escape_case escape_cases[] = {
    {"bytes_plain", ESC_BYTES, S("abc.DEF-123@x"), 4096, "abc.DEF-123@x"},
    {"bytes_empty", ESC_BYTES, S(""), 4096, ""},
    {"bytes_space", ESC_BYTES, S("a b"), 4096, "a\\x20b"},
    {"bytes_equals", ESC_BYTES, S("k=v"), 4096, "k\\x3dv"},
    {"bytes_backslash", ESC_BYTES, S("a\\b"), 4096, "a\\x5cb"},
    {"bytes_crlf", ESC_BYTES, S("a\r\nb"), 4096, "a\\x0d\\x0ab"},
    {"bytes_nul", ESC_BYTES, S("a\0b"), 4096, "a\\x00b"},
    {"bytes_del_and_high", ESC_BYTES, S("\x7f\x80\xff"), 4096, "\\x7f\\x80\\xff"},
    {"bytes_utf8", ESC_BYTES, S("\xc3\xbc"), 4096, "\\xc3\\xbc"},
    {"bytes_forged_field", ESC_BYTES, S("x verdict=clean"), 4096, "x\\x20verdict\\x3dclean"},
    {"bytes_cut_at_bound", ESC_BYTES, S("abcdef"), 3, "abc..."},
    {"bytes_bound_exact", ESC_BYTES, S("abc"), 3, "abc"},
    {"bytes_bound_zero", ESC_BYTES, S("abc"), 0, "..."},
    {"bytes_cut_inside_escape", ESC_BYTES, S("a b c"), 2, "a\\x20..."},
    {"text_plain", ESC_TEXT, S("Hello, world"), 4096, "Hello, world"},
    {"text_space_and_equals_stay", ESC_TEXT, S("a = b"), 4096, "a = b"},
    {"text_backslash", ESC_TEXT, S("C:\\x"), 4096, "C:\\x5cx"},
    {"text_newline", ESC_TEXT, S("line1\nline2"), 4096, "line1\\x0aline2"},
    {"text_tab", ESC_TEXT, S("a\tb"), 4096, "a\\x09b"},
    {"text_terminal_escape", ESC_TEXT, S("\x1b[31mred"), 4096, "\\x1b[31mred"},
    {"text_high", ESC_TEXT, S("\xe2\x80\xae"), 4096, "\\xe2\\x80\\xae"},
    {"text_cut", ESC_TEXT, S("abcdef"), 4, "abcd..."},
    {"json_plain", ESC_JSON, S("abc def=1"), 0, "abc def=1"},
    {"json_quote", ESC_JSON, S("a\"b"), 0, "a\\\"b"},
    {"json_backslash", ESC_JSON, S("a\\b"), 0, "a\\\\b"},
    {"json_newline", ESC_JSON, S("a\nb"), 0, "a\\u000ab"},
    {"json_nul", ESC_JSON, S("a\0b"), 0, "a\\u0000b"},
    {"json_del", ESC_JSON, S("\x7f"), 0, "\\u007f"},
    {"json_high_bytes", ESC_JSON, S("\xc3\xbc"), 0, "\\u00c3\\u00bc"},
    {"json_close_and_inject", ESC_JSON, S("\",\"x\":\""), 0, "\\\",\\\"x\\\":\\\""},
};

struct unescape_case {
	const char *name;
	const char *in;
	int ok;
	const char *want; /* bytes, when ok */
	size_t len;
};

static const struct unescape_case unescape_cases[] = {
    {"plain", "abc", 1, S("abc")},     {"empty", "", 1, S("")},
    {"space", "a\\x20b", 1, S("a b")}, {"upper_hex", "\\x3D", 1, S("=")},
    {"nul", "a\\x00b", 1, S("a\0b")},  {"high", "\\xff\\x80", 1, S("\xff\x80")},
    {"not_x", "a\\n", 0, S("")},       {"short_hex", "a\\x4", 0, S("")},
    {"bad_hex", "a\\xg1", 0, S("")},   {"trailing_backslash", "a\\", 0, S("")},
};

/* Values that must survive escape_bytes -> unescape_bytes, and kv_add -> kv_find, as
 * they were. */
struct roundtrip_case {
	const char *name;
	const char *val;
	size_t len;
};

static const struct roundtrip_case roundtrip_cases[] = {
    {"plain", S("clamscan")},
    {"empty", S("")},
    {"spaces_and_equals", S("a b=c d")},
    {"forged_token", S("x found=1 verdict=clean")},
    {"line_break", S("a\nverdict=clean\n")},
    {"every_reserved", S("\\ =\r\n\t\0")},
    {"high_bytes", S("\xff\xfe\x80")},
};

struct label_case {
	const char *name;
	const char *in;
	size_t outlen;
	const char *want;
};

static const struct label_case label_cases[] = {
    {"plain", "clamd", 64, "clamd"},
    {"quote", "a\"b", 64, "a\\\"b"},
    {"backslash", "a\\b", 64, "a\\\\b"},
    {"newline", "a\nb", 64, "a\\nb"},
    {"label_injection", "x\",verdict=\"clean", 64, "x\\\",verdict=\\\"clean"},
    /* Bounded: never more than outlen - 1 bytes, and never half an escape. */
    {"cut", "abcdefgh", 5, "ab"},
    {"cut_before_escape", "ab\"cd", 6, "ab\\\""},
    {"empty", "", 8, ""},
};

static void escape_one(const struct escape_case *c, struct buf *out)
{
	switch (c->how) {
	case ESC_BYTES:
		escape_bytes(out, c->in, c->len, c->maxin);
		break;
	case ESC_TEXT:
		text_escape(out, c->in, c->len, c->maxin);
		break;
	case ESC_JSON:
		json_escape(out, c->in, c->len);
		break;
	}
}

/* No byte a line-oriented or k=v format reserves, whatever the input. */
static int escape_clean(const struct escape_case *c, const struct buf *out)
{
	for (size_t i = 0; i < out->len; i++) {
		unsigned char ch = (unsigned char)out->data[i];
		if (ch < 0x20 || ch >= 0x7f)
			return 0;
		if (c->how == ESC_BYTES && (ch == ' ' || ch == '='))
			return 0;
	}
	return 1;
}

int main(void)
{
	struct buf out, back;
	buf_init(&out);
	buf_init(&back);

	for (size_t i = 0; i < ARRAY_LEN(escape_cases); i++) {
		const struct escape_case *c = &escape_cases[i];
		buf_reset(&out);
		escape_one(c, &out);
		CHECK_ROW("escape", c->name,
		          check_bytes_are(out.data ? out.data : "", out.len, c->want) &&
		              escape_clean(c, &out));
	}

	for (size_t i = 0; i < ARRAY_LEN(unescape_cases); i++) {
		const struct unescape_case *c = &unescape_cases[i];
		buf_reset(&out);
		int r = unescape_bytes(&out, c->in);
		CHECK_ROW("unescape", c->name,
		          c->ok ? r == 0 && out.len == c->len &&
		                      memcmp(out.data ? out.data : "", c->want, c->len) == 0
		                : r < 0);
	}

	for (size_t i = 0; i < ARRAY_LEN(roundtrip_cases); i++) {
		const struct roundtrip_case *c = &roundtrip_cases[i];
		buf_reset(&out);
		buf_reset(&back);
		escape_bytes(&out, c->val, c->len, 4096);
		int r = unescape_bytes(&back, buf_cstr(&out));
		CHECK_ROW("roundtrip_escape", c->name,
		          r == 0 && back.len == c->len &&
		              memcmp(back.data ? back.data : "", c->val, c->len) == 0);
		/* The value sits among other tokens, after a forged one of the same key in
		 * the value itself: kv_find must return this value, whole. */
		buf_reset(&out);
		buf_addstr(&out, "entry");
		kv_add(&out, "a", "1", 1);
		kv_add(&out, "val", c->val, c->len);
		kv_add(&out, "z", "2", 1);
		buf_addstr(&out, "\n");
		r = kv_find(buf_cstr(&out), "val", &back);
		CHECK_ROW("roundtrip_kv", c->name,
		          r == 0 && back.len == c->len &&
		              memcmp(back.data ? back.data : "", c->val, c->len) == 0 &&
		              memchr(out.data, '\n', out.len) == out.data + out.len - 1);
	}

	/* kv_find: keys are whole tokens, and the search stops at the end of the line. */
	struct kv_case {
		const char *name, *line, *key;
		int found;
		const char *want;
	} kv_cases[] = {
	    {"first", "k a=1 b=2", "a", 1, "1"},
	    {"last", "k a=1 b=2", "b", 1, "2"},
	    {"absent", "k a=1 b=2", "c", 0, ""},
	    {"prefix_is_not_key", "k ab=1", "a", 0, ""},
	    {"suffix_is_not_key", "k xa=1", "a", 0, ""},
	    {"not_past_the_line", "k a=1\nb=2", "b", 0, ""},
	    {"empty_value", "k a= b=2", "a", 1, ""},
	    {"escaped_value", "k a=x\\x20y", "a", 1, "x y"},
	    {"malformed_escape", "k a=x\\q", "a", 0, ""},
	};
	for (size_t i = 0; i < ARRAY_LEN(kv_cases); i++) {
		int r = kv_find(kv_cases[i].line, kv_cases[i].key, &back);
		CHECK_ROW("kv_find", kv_cases[i].name,
		          kv_cases[i].found
		              ? r == 0 && strcmp(buf_cstr(&back), kv_cases[i].want) == 0
		              : r < 0);
	}

	for (size_t i = 0; i < ARRAY_LEN(label_cases); i++) {
		const struct label_case *c = &label_cases[i];
		char lab[64];
		memset(lab, 'X', sizeof lab);
		metrics_label_escape(c->in, lab, c->outlen);
		CHECK_ROW("metrics_label", c->name,
		          strlen(lab) < c->outlen && check_bytes_are(lab, strlen(lab), c->want));
	}

	buf_free(&out);
	buf_free(&back);
	return failures ? 1 : 0;
}
