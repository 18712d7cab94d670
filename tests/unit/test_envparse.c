// links:
/*
 * test_envparse - unit test of the envelope records (lib/envelope.c, envelope_parse and
 * envelope_format), as a table of cases: each input is parsed, and either gives the
 * wanted sender, recipients, SMTPUTF8 flag and bytes consumed, or fails with the wanted
 * reason. Every accepted envelope is formatted again and must parse to the same thing
 * (the records the splitter writes are the records the router and the connectors read).
 *
 * Hostile inputs: records out of order, a second sender, a forged record hidden behind a
 * CR or a NUL, ESMTP parameters in an address, no end record, what follows the end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "envelope.h"
#include "util.h"

struct envparse_case {
	const char *name;
	const char *in;
	size_t len;
	int ok;
	/* when ok */
	int smtputf8;
	const char *sender;
	const char *rcpts; /* the recipients joined by ',' */
	size_t used;
	/* when not ok: a part of the reason */
	const char *why;
};

#define S(s) s, sizeof s - 1

static const struct envparse_case cases[] = {
    {"one_rcpt", S("Sa@b\nRc@d\nE\n"), 1, 0, "a@b", "c@d", 12, NULL},
    {"two_rcpts", S("Sa@b\nRc@d\nRe@f\nE\n"), 1, 0, "a@b", "c@d,e@f", 17, NULL},
    {"null_sender", S("S\nRc@d\nE\n"), 1, 0, "", "c@d", 9, NULL},
    {"crlf_records", S("Sa@b\r\nRc@d\r\nE\r\n"), 1, 0, "a@b", "c@d", 15, NULL},
    {"rest_not_read", S("Sa@b\nRc@d\nE\nFrom: x\n\nbody"), 1, 0, "a@b", "c@d", 12, NULL},
    {"utf8_flag", S("U\nSa@b\nRj\xc3\xbcrgen@d\nE\n"), 1, 1, "a@b", "j\xc3\xbcrgen@d", 20, NULL},
    {"utf8_sender", S("U\nS\xc3\xa9@b\nRc@d\nE\n"), 1, 1, "\xc3\xa9@b", "c@d", 15, NULL},
    {"empty", S(""), 0, 0, NULL, NULL, 0, "incomplete"},
    {"no_end", S("Sa@b\nRc@d\n"), 0, 0, NULL, NULL, 0, "incomplete"},
    {"end_without_newline", S("Sa@b\nRc@d\nE"), 0, 0, NULL, NULL, 0, "incomplete"},
    {"no_rcpt", S("Sa@b\nE\n"), 0, 0, NULL, NULL, 0, "recipient"},
    {"empty_rcpt", S("Sa@b\nR\nE\n"), 0, 0, NULL, NULL, 0, "invalid recipient (empty)"},
    {"rcpt_before_sender", S("Rc@d\nSa@b\nE\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"second_sender", S("Sa@b\nSx@y\nRc@d\nE\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"end_before_sender", S("E\nSa@b\nRc@d\nE\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"u_after_sender", S("Sa@b\nU\nRc@d\nE\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"u_twice", S("U\nU\nSa@b\nRc@d\nE\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"u_with_value", S("Ux\nSa@b\nRc@d\nE\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"end_with_value", S("Sa@b\nRc@d\nEx\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"unknown_record", S("Sa@b\nXc@d\nRc@d\nE\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"blank_line", S("Sa@b\n\nRc@d\nE\n"), 0, 0, NULL, NULL, 0, "unexpected record"},
    {"nul_hides_record", S("Sa@b\nRc@d\0\nRx@y\nE\n"), 0, 0, NULL, NULL, 0, "NUL"},
    {"bare_cr_hides_record", S("Sa@b\nRc@d\rRx@y\nE\n"), 0, 0, NULL, NULL, 0, "invalid recipient"},
    {"esmtp_param_in_rcpt", S("Sa@b\nRc@d> NOTIFY=NEVER\nE\n"), 0, 0, NULL, NULL, 0,
     "invalid recipient"},
    {"esmtp_param_in_sender", S("Sa@b> SIZE=1\nRc@d\nE\n"), 0, 0, NULL, NULL, 0, "invalid sender"},
    {"utf8_without_flag", S("Sa@b\nRj\xc3\xbcrgen@d\nE\n"), 0, 0, NULL, NULL, 0,
     "invalid recipient"},
    {"bad_utf8_with_flag", S("U\nSa@b\nRa\xff@d\nE\n"), 0, 0, NULL, NULL, 0, "invalid recipient"},
};

static int rcpts_are(const struct envelope *env, const char *want)
{
	struct buf b;
	buf_init(&b);
	for (size_t i = 0; i < env->n_rcpts; i++)
		buf_printf(&b, "%s%s", i ? "," : "", env->rcpts[i]);
	int ok = check_bytes_are(buf_cstr(&b), b.len, want);
	buf_free(&b);
	return ok;
}

static int accepted_as_wanted(const struct envparse_case *c, const struct envelope *env,
                              size_t used)
{
	return used == c->used && env->smtputf8 == c->smtputf8 &&
	       check_bytes_are(env->sender, strlen(env->sender), c->sender) &&
	       rcpts_are(env, c->rcpts);
}

/* envelope_format of env parses back to the same envelope, consuming all of it. */
static int format_roundtrips(const struct envparse_case *c, const struct envelope *env)
{
	struct buf b;
	struct envelope again;
	char reason[256];
	size_t used = 0;
	buf_init(&b);
	envelope_format(env, &b);
	int ok = envelope_parse(b.data, b.len, &again, &used, reason, sizeof reason) == 0;
	if (ok) {
		ok = used == b.len && again.smtputf8 == c->smtputf8 &&
		     strcmp(again.sender, c->sender) == 0 && rcpts_are(&again, c->rcpts);
		envelope_free(&again);
	}
	buf_free(&b);
	return ok;
}

int main(void)
{
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		const struct envparse_case *c = &cases[i];
		struct envelope env;
		char reason[256] = "";
		size_t used = 0;
		int r = envelope_parse(c->in, c->len, &env, &used, reason, sizeof reason);
		if (c->ok) {
			CHECK_ROW("parse", c->name, r == 0 && accepted_as_wanted(c, &env, used));
			if (r == 0) {
				CHECK_ROW("format_roundtrip", c->name, format_roundtrips(c, &env));
				envelope_free(&env);
			}
		} else {
			if (r < 0 && strstr(reason, c->why) == NULL)
				printf("  reason \"%s\", want \"%s\" in it\n", reason, c->why);
			CHECK_ROW("parse_rejects", c->name,
			          r < 0 && strstr(reason, c->why) != NULL && env.sender == NULL &&
			              env.n_rcpts == 0);
			if (r == 0)
				envelope_free(&env);
		}
	}
	return failures ? 1 : 0;
}
