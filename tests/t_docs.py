#!/usr/bin/env python3
"""The documentation covers what the programs accept: every row of the configuration
table (lib/conf_schema.c) is in spoold.conf(5), in the paragraph of its group, and in
the documented example conf/spoold.conf, in its group; every key those two name is a row;
and every spoolctl subcommand is in spoolctl(8)."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402


def _read(*path):
    with open(os.path.join(harness.ROOT, *path), encoding="utf-8") as f:
        return f.read()


def schema():
    """{group: {key: type}} from the table itself (lib/conf_schema.c), as the unit test
    binary prints it with --keys; "." is the top level."""
    exe = os.path.join(os.path.dirname(harness.BIN), "tests", "unit_confschema")
    assert os.access(exe, os.X_OK), "%s is missing: `make prod` builds it" % exe
    out = subprocess.run([exe, "--keys"], check=True, capture_output=True, text=True).stdout
    groups = {".": {}}
    for line in out.splitlines():
        f = line.split()
        if f[0] == "group":
            groups[f[1]] = {}
        else:
            groups[f[0]][f[1]] = f[2]
    assert sum(len(v) for v in groups.values()) > 80, "too few rows: %s" % out
    return groups


def _man_words(text):
    # roff escapes: \\- is a hyphen, \\fB..\\fR are fonts
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-")
    return set(re.findall(r"[a-z_0-9]+", text))


def _words(text):
    return re.findall(r"[a-z_0-9]+", text)


def _man_paragraphs():
    """[(heading, nested headings, text)] of the .TP paragraphs of TOP-LEVEL KEYS and
    GROUPS; a paragraph nested in .RS/.RE stays in its group's, its heading in the
    nested list."""
    text = _read("docs", "man", "spoold.conf.5")
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-")
    body = text[text.index(".SH TOP-LEVEL KEYS"):text.index(".SH RELOADING")]
    lines = body.splitlines()
    paras, depth = [], 0
    for i, line in enumerate(lines):
        if line.startswith(".RS"):
            depth += 1
        elif line.startswith(".RE"):
            depth -= 1
        head = lines[i + 1] if line == ".TP" and i + 1 < len(lines) else ""
        if re.match(r"\.BR? ", head):
            if depth == 0:
                paras.append((head, [], []))
            elif paras:
                paras[-1][1].append(head)
        if paras:
            paras[-1][2].append(line)
    return [(h, n, "\n".join(t)) for h, n, t in paras]


@test
def every_config_key_is_in_the_man_page_and_back():
    """Each row in the paragraph of its group (a top-level key in a heading), each group
    with a paragraph of its own; and each key the page names is a row."""
    sch = schema()
    known = set(k for g in sch.values() for k in g) | set(sch)
    paras = _man_paragraphs()
    heads = {}
    for head, nested, text in paras:
        words = _words(head)
        assert words[0] in known, "spoold.conf(5) heading %r names no key" % head
        heads.setdefault(words[0], []).append(text)
        group = sch.get(words[0], sch["."])
        for w in words[1:] + [x for n in nested for x in _words(n)]:
            assert w in group or w in sch["."], \
                "spoold.conf(5): %r under %r is not a key there" % (w, words[0])
        # Every identifier the text names is a key somewhere (metric names aside).
        for w in re.findall(r"\b[a-z0-9]+(?:_[a-z0-9]+)+\b", text):
            assert w in known or w.startswith("spoold_"), \
                "spoold.conf(5) names %r, which is no configuration key" % w
    top_words = set(w for h, _, _ in paras for w in _words(h))
    missing = ["." + k for k in sch["."] if k not in top_words]
    for g, keys in sch.items():
        if g == ".":
            continue
        if g not in heads:
            missing.append(g)
            continue
        words = set(w for t in heads[g] for w in _words(t))
        missing += ["%s.%s" % (g, k) for k in keys if k not in words]
    assert not missing, "rows missing from spoold.conf(5): %s" % missing


def _example_blocks():
    """({top-level key}, {group: set of keys}) of conf/spoold.conf: a list's keys are
    those it sets and those of the comment table above it. A group whose presence turns
    it on (fleet) is shown commented out ("# fleet = {"): its keys are those of the
    comment table above it."""
    lines = _read("conf", "spoold.conf").splitlines()
    top, blocks, cur, comments = set(), {}, None, []
    for line in lines:
        if cur is None:
            m = re.match(r"^(\w+)\s*=\s*([{(])?", line)
            off = re.match(r"^# (\w+) = \{$", line)
            if off:
                blocks[off.group(1)] = set()
                for c in comments:
                    t = re.match(r"^#\s{1,4}([a-z_0-9]+)(?:\s{2,}|$)", c)
                    if t and t.group(1) != off.group(1):
                        blocks[off.group(1)].add(t.group(1))
            if m and m.group(2):
                cur = m.group(1)
                blocks[cur] = set()
                if m.group(2) == "(":
                    for c in comments:
                        t = re.match(r"^#\s{1,4}([a-z_0-9]+(?:,\s*[a-z_0-9]+)*)(?:\s{2,}|$)", c)
                        if t:
                            blocks[cur] |= set(re.split(r",\s*", t.group(1)))
            elif m:
                top.add(m.group(1))
            comments = comments + [line] if line.startswith("#") else []
        elif re.match(r"^[})]\s*;", line):
            cur = None
        else:
            m = re.match(r"^\s+(\w+)\s*=", line)
            if m:
                blocks[cur].add(m.group(1))
    return top, blocks


@test
def every_config_key_is_in_the_example_and_back():
    sch = schema()
    top, blocks = _example_blocks()
    missing = ["." + k for k in sch["."] if k not in top]
    missing += [g for g in sch if g != "." and g not in blocks]
    for g, keys in blocks.items():
        missing += ["%s.%s" % (g, k) for k in sch.get(g, {}) if k not in keys]
    assert not missing, "rows missing from conf/spoold.conf: %s" % missing
    extra = [k for k in top if k not in sch["."]]
    extra += ["%s.%s" % (g, k) for g, keys in blocks.items() for k in keys
              if k not in sch.get(g, {})]
    assert not extra, "conf/spoold.conf names keys the table does not have: %s" % extra


@test
def every_spoolctl_command_is_in_the_man_page():
    src = _read("spoolctl", "spoolctl.c")
    table = re.search(r"cmds\[\] = \{(.*?)\};", src, re.S).group(1)
    cmds = re.findall(r'\{"([a-z]+)",', table)
    assert len(cmds) >= 10, cmds
    subs = re.findall(r'strcmp\(sub, "([a-z]+)"\)', _read("spoolctl", "quarantine.c"))
    assert {"list", "show", "release", "delete", "expire"} <= set(subs), subs
    man = _read("docs", "man", "spoolctl.8")
    words = _man_words(man)
    missing = [c for c in cmds if c not in words]
    missing += ["quarantine " + s for s in set(subs)
                if not re.search(r"quarantine\s+(\\f[BIR])?[^\n]*\b%s\b" % s, man)]
    assert not missing, "spoolctl(8) does not document: %s" % missing
    # Control commands take a stage or "connectors".
    assert "connectors" in words, "spoolctl(8) does not say that connectors can be restarted"


def _blocks_after(text, heading):
    """The fenced code blocks of the section that starts at heading."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return re.findall(r"^```\w*\n(.*?)^```", text[start:end if end > 0 else None], re.S | re.M)


@test
def postfix_snippet_files_are_the_doc_blocks():
    doc = _read("docs", "postfix.md")
    for name in ("master.cf", "main.cf"):
        blocks = _blocks_after(doc, "## " + name)
        assert blocks, name
        assert _read("dist", "postfix", name) == blocks[0], \
            "dist/postfix/%s differs from the block in docs/postfix.md" % name


@test
def readme_install_recipe_uses_the_installed_snippets():
    (block,) = _blocks_after(_read("README.md"), "## Install on a relay")
    cmds = [l for l in block.splitlines() if l.strip() and not l.startswith("#")]
    assert len(cmds) <= 10, "the relay install takes %d commands, at most 10: %s" % (
        len(cmds), cmds)
    assert "make install" in cmds
    makefile = _read("Makefile")
    for name in ("main.cf", "master.cf"):
        installed = "/usr/local/share/spoold/postfix/" + name
        assert any(installed in c for c in cmds), (installed, cmds)
        assert "dist/postfix/%s" % name in makefile, "make install does not install " + name
    # clamd must alert on what it cannot scan (the canary checks it, spoold.conf(5)).
    assert any("AlertExceedsMax yes" in c and "AlertEncrypted yes" in c for c in cmds), cmds
    assert "systemctl enable --now spoold" in cmds, cmds


@test
def every_suite_that_runs_a_pipeline_runs_separated_too():
    # make test's separated pass (Makefile SEPARATED_SUITES): a new suite that runs a
    # pipeline is in it, unless it is one of the kinds the Makefile says are not.
    mk = _read("Makefile")
    listed = set(re.search(r"^SEPARATED_SUITES = ((?:.*\\\n)*.*)$", mk, re.M).group(1)
                 .replace("\\\n", " ").split())
    tests_dir = os.path.join(harness.ROOT, "tests")
    runs = set(f[:-3] for f in os.listdir(tests_dir)
               if f.startswith("t_") and f.endswith(".py")
               and re.search(r"^from lib\.spool import .*\bPipeline\b", _read("tests", f), re.M))
    exempt = {n for n in runs if n.startswith("t_privsep_")} | {
        "t_crash", "t_crashpoints", "t_speed_smtp"}
    assert runs - exempt <= listed, "not in SEPARATED_SUITES: %s" % sorted(runs - exempt - listed)
    assert listed <= runs, "SEPARATED_SUITES names suites that run no pipeline: %s" % sorted(
        listed - runs)


if __name__ == "__main__":
    harness.main()
