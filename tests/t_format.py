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


if __name__ == "__main__":
    harness.main()
