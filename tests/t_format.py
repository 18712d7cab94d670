#!/usr/bin/env python3
"""The C sources follow .clang-format (make check-format)."""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402


@test
def sources_follow_clang_format():
    if "asan" in (harness.BIN or ""):
        harness.skip("checked once, with the production build")
    if not shutil.which("clang-format"):
        harness.skip("clang-format not installed")
    r = harness.run(["make", "-s", "check-format"], cwd=harness.ROOT, timeout=120)
    assert r.returncode == 0, r.out[-3000:]


# Issue 18: a file or a function that keeps growing is hard to review and to test in
# parts. The measure is textual, as the issue states it: a function runs from its
# opening `{` at column 0 to the next line that is exactly `}`, and its length is the
# lines between the two (the counts: exec_run 216, ctl_cmd_status 251).
# clang-format (Linux braces) puts every function's braces there; the brace check makes
# sure no function escapes the measure by opening its brace elsewhere.
MAX_FILE_LINES = 900
MAX_FUNCTION_LINES = 120


def _function_head_name(line):
    """The function's name if `line` (column 0) reads as the end of a function head."""
    head = line.split("(", 1)[0].split()
    return head[-1].lstrip("*") if head else "?"


def _source_measure(rel, lines):
    """Complaints about one source file: its length, long functions, misplaced braces."""
    bad = []
    if len(lines) > MAX_FILE_LINES:
        bad.append("%s: %d lines (at most %d)" % (rel, len(lines), MAX_FILE_LINES))
    head = None      # the column-0 line that opened the current function head
    prev = ""        # the last non-blank line
    start = None     # line number of the open function's `{`
    name = None
    for no, line in enumerate(lines, 1):
        if start is not None:
            if line == "}":
                length = no - start - 1
                if length > MAX_FUNCTION_LINES:
                    bad.append("%s:%d: %s is %d lines (at most %d)" %
                               (rel, start, name, length, MAX_FUNCTION_LINES))
                start = None
            continue
        if line == "{":
            if not prev.rstrip().endswith(")"):
                bad.append("%s:%d: `{` at column 0 not after a function head" % (rel, no))
            name = _function_head_name(head or prev)
            start = no
            head = None
            continue
        if not line.strip():
            continue
        if line[0] not in " \t#/*}" and "(" in line and "=" not in line.split("(", 1)[0]:
            head = line
        if head is not None:
            # A head whose `{` is on its own line is what the measure expects; `) {`
            # at the end of a head would hide the function from it.
            end = line.rstrip()
            if end.endswith("{") and not end.endswith("= {"):
                bad.append("%s:%d: the opening brace of %s is not at column 0" %
                           (rel, no, _function_head_name(head)))
                head = None
            elif end.endswith(";"):
                head = None
        prev = line
    if start is not None:
        bad.append("%s:%d: %s has no closing `}` at column 0" % (rel, start, name))
    return bad


@test
def no_source_file_over_900_lines_or_function_over_120():
    if "asan" in (harness.BIN or ""):
        harness.skip("checked once, with the production build")
    bad = []
    for rel in harness.production_sources():
        with open(os.path.join(harness.ROOT, rel), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        bad += _source_measure(rel, lines)
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    harness.main()
