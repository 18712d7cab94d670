#!/usr/bin/env python3
"""Issue 18: the names of the files in a spool entry directory are one list, each name
spelled once, in lib/entry_names.h; a production source that spells one of them as a
string literal fails here, so the rule is kept by this test, not by hand.

A name spelled twice can drift apart between the stage that writes the file and the one
that reads it, and the reader then takes the file as absent (a hold never retried, a pass
count never read). What counts as a spelling: a C string literal (comments are not code)
in a .c or .h file of lib/ or of a program folder (the Makefile's PROGS) that equals a
name or its `.tmp` name, starts with a prefix name (`out.`) or ends with a suffix name
(`.ATT`). The tests themselves keep their literal spellings on purpose: they read the
on-disk contract from outside, so a change of a name fails them.

The header's names are also the contract's: each is in docs/INTERNALS.md's table of the
files in a work directory."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402

HOME = "lib/entry_names.h"

# Converted after merge: these sources still spell entry names as literals because other
# branches own them while this rule lands. The lead converts them after the merges and
# empties this list; a path here that no longer spells any name fails, so that it is
# taken out. (lib/queuefile.c, also owned elsewhere, spells none.)
CONVERTED_AFTER_MERGE = []

# The same words where they do not name a file: (path, literal) -> (how many, why). The
# count is exact, so a new literal of such a word is looked at (and, if it names a file,
# spelled with the header's name) instead of passing under an old row.
NOT_FILE_NAMES = {
    ("lib/conf_schema.c", "strip"): (1, "the infected_action value"),
    ("scanner-runner/canary.c", "reason"): (1, "a key in run/scanners' k=v line"),
    ("lib/spool.c", "hold"): (1, "the state directory hold/, not a file of an entry"),
    ("lib/conf_schema.c", "deliver"): (1, "the hold_expiry_action value"),
    ("lib/export.c", "hold"): (1, "the database's state name of a hold record"),
    ("lib/verdict.c", "message"): (1, "the part token of a whole-message verdict line"),
    ("lib/outbox.c", "attempts"): (1, "a key in the deliver file's k=v line"),
    ("router/hold.c", "attempts"): (1, "a key in the hold file's k=v line"),
    ("router/notice.c", "strip"): (1, "the infected_action value"),
    ("router/router.c", "strip"): (1, "the infected_action value"),
    ("spoolctl/fleet.c", "release"): (1, "the fleet subcommand"),
    ("spoolctl/spoolctl.c", "hold"): (1, "the spoolctl command"),
    ("spoolctl/queue.c", "hold"): (2, "the queue name of spoolctl ls, the verb of a refusal"),
    ("spoolctl/queue.c", "manual-hold"): (1, "the state spoolctl ls shows"),
    ("spoolctl/quarantine.c", "release"): (2, "the quarantine subcommand"),
    ("spoolctl/quarantine.c", "reason"): (1, "a key of report.json"),
    ("spoolctl/flush.c", "hold"): (1, "the flush subcommand"),
    ("spoolctl/status.c", "reason"): (1, "a key in the hold file's k=v line"),
    ("splitter/mime.c", "message"): (3, "the part named in a read error"),
    ("splitter/mime_leaf.c", "message"): (1, "the MIME media type"),
    ("splitter/mime_parse.c", "message"): (2, "the MIME media type, the part in a read error"),
}

_DEFINE = re.compile(r'^#define\s+(ENTRY_\w+)\s+"([^"\\]*)"\s*$')


def header_names():
    """{value: macro} of the header, checking that each value is defined once."""
    names = {}
    with open(os.path.join(harness.ROOT, HOME)) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        m = _DEFINE.match(line)
        if not m:
            assert not line.startswith("#define ENTRY_"), "%s: not one plain name: %s" % (HOME, line)
            continue
        macro, value = m.groups()
        assert value not in names, "%s: %r spelled twice (%s, %s)" % (HOME, value, names[value], macro)
        assert i > 0 and lines[i - 1].rstrip().endswith("*/"), \
            "%s: %s has no comment above it (who writes it, who reads it)" % (HOME, macro)
        names[value] = macro
    assert len(names) >= 20, "%s: only %d names" % (HOME, len(names))
    return names


def string_literals(text):
    """[(line, value)] of the string literals of C source text, comments skipped."""
    out = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            line += text.count("\n", i, j)
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'":
            j, buf = i + 1, []
            while j < n and text[j] != c and text[j] != "\n":
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j:j + 2])
                    j += 2
                else:
                    buf.append(text[j])
                    j += 1
            if c == '"':
                out.append((line, "".join(buf)))
            i = j + 1
        else:
            i += 1
    return out


def spells(value, names):
    """The name that a literal value spells, or None."""
    for name in names:
        if name.endswith("."):
            if value.startswith(name):
                return name
        elif name.startswith("."):
            if value.endswith(name):
                return name
        elif value in (name, name + ".tmp"):
            return name
    return None


def _allowed_after_merge(rel):
    return any(rel == a or (a.endswith("/") and rel.startswith(a)) for a in CONVERTED_AFTER_MERGE)


@test
def the_scanner_finds_a_spelling_and_skips_comments():
    """The check below can fail: a literal in a call, in a table, as a .tmp name, a prefix
    and a suffix are found; comments, longer texts and escaped quotes are not names."""
    names = {"hold": "", "out.": "", ".ATT": "", "message": ""}
    src = ('/* "hold" in a comment */ openat(fd, "hold", O_RDONLY); // "message"\n'
           'static const char *k[] = {"message", NULL};\n'
           'x("hold.tmp"); y("out.%s", c); z("%04u.ATT"); w("cannot read hold");\n'
           'v("say \\"hold\\""); u(\'"\');\n')
    found = [(ln, spells(v, names)) for ln, v in string_literals(src) if spells(v, names)]
    assert found == [(1, "hold"), (2, "message"), (3, "hold"), (3, "out."), (3, ".ATT")], found


@test
def entry_names_are_spelled_only_in_their_header():
    names = header_names()
    bad, counts, after_merge_hits = [], {}, set()
    for rel in harness.production_sources((".c", ".h")):
        if rel == HOME:
            continue
        with open(os.path.join(harness.ROOT, rel), errors="replace") as f:
            text = f.read()
        for ln, value in string_literals(text):
            name = spells(value, names)
            if name is None:
                continue
            if _allowed_after_merge(rel):
                after_merge_hits.add(next(a for a in CONVERTED_AFTER_MERGE
                                          if rel == a or (a.endswith("/") and rel.startswith(a))))
                continue
            if (rel, value) in NOT_FILE_NAMES:
                counts[(rel, value)] = counts.get((rel, value), 0) + 1
                continue
            bad.append('%s:%d: "%s" (use %s from %s)' % (rel, ln, value, names[name], HOME))
    for key, (want, why) in sorted(NOT_FILE_NAMES.items()):
        got = counts.get(key, 0)
        if got != want:
            bad.append('%s: "%s" (%s) is spelled %d times, NOT_FILE_NAMES says %d: a new one '
                       "that names a file uses the header's name; otherwise fix the count"
                       % (key[0], key[1], why, got, want))
    for a in CONVERTED_AFTER_MERGE:
        if a not in after_merge_hits:
            bad.append("%s spells no entry name any more: take it out of CONVERTED_AFTER_MERGE" % a)
    assert not bad, "\n".join(bad)


# Names docs/INTERNALS.md's table may lack for a while, when another branch rewrites that
# file as this one lands: empty on main (a name here that the table lists fails).
INTERNALS_PENDING = []


@test
def every_entry_name_is_in_the_internals_file_table():
    with open(os.path.join(harness.ROOT, "docs", "INTERNALS.md")) as f:
        text = f.read()
    m = re.search(r"^## Files in a work directory.*?\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, "docs/INTERNALS.md: no section 'Files in a work directory'"
    listed = set()
    for row in m.group(1).splitlines():
        if row.startswith("| `"):
            for n in re.findall(r"`([^`]+)`", row.split("|")[1]):
                listed.add(n.rstrip("/"))
    bad = []
    for name in header_names():
        if name.endswith("."):
            found = any(n.startswith(name) for n in listed)
        elif name.startswith("."):
            found = any(n.endswith(name) for n in listed)
        else:
            found = name in listed
        if found and name in INTERNALS_PENDING:
            bad.append("%s is in the table now: take it out of INTERNALS_PENDING" % name)
        elif not found and name not in INTERNALS_PENDING:
            bad.append("%s (%s) is not in docs/INTERNALS.md's table of work directory files"
                       % (name, HOME))
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    harness.main()
