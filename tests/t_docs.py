#!/usr/bin/env python3
"""The documentation covers what the programs accept: every configuration key that
lib/conf.c knows is in spoold.conf(5) and in the documented example conf/spoold.conf, and
every spoolctl subcommand is in spoolctl(8)."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402


def _read(*path):
    with open(os.path.join(harness.ROOT, *path), encoding="utf-8") as f:
        return f.read()


def conf_keys():
    """{group array name: [keys]} from the key lists lib/conf.c checks every group with."""
    src = _read("lib", "conf.c")
    res = {}
    for m in re.finditer(r"static const char \*const (\w*keys)\[\] = \{(.*?)\};", src, re.S):
        res[m.group(1)] = re.findall(r'"([a-z_0-9]+)"', m.group(2))
    assert res and sum(len(v) for v in res.values()) > 40, "no key lists found in lib/conf.c"
    return res


def _man_words(text):
    # roff escapes: \- is a hyphen, \fB..\fR are fonts
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-")
    return set(re.findall(r"[a-z_0-9]+", text))


@test
def every_config_key_is_in_the_man_page_and_the_example():
    man = _man_words(_read("docs", "man", "spoold.conf.5"))
    example = set(re.findall(r"^\s*([a-z_0-9]+)\s*=", _read("conf", "spoold.conf"), re.M))
    # Keys of list entries (scanners, connectors) show in the example's comment table.
    example |= set(re.findall(r"^#\s+([a-z_0-9]+)(?:,|\s{2,})", _read("conf", "spoold.conf"), re.M))
    example |= set(re.findall(r"^#\s+[a-z_0-9]+, ([a-z_0-9]+)", _read("conf", "spoold.conf"), re.M))
    missing_man, missing_example = [], []
    for group, keys in sorted(conf_keys().items()):
        for k in keys:
            if k not in man:
                missing_man.append("%s.%s" % (group, k))
            if k not in example:
                missing_example.append("%s.%s" % (group, k))
    assert not missing_man, "keys missing from spoold.conf(5): %s" % missing_man
    assert not missing_example, "keys missing from conf/spoold.conf: %s" % missing_example


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


if __name__ == "__main__":
    harness.main()
