#!/usr/bin/env python3
"""The built binaries carry the hardening the Makefile asks for (HARDEN_* flags).

Checked with readelf on every program in --bin and every unit test beside it:
  - PIE: ELF type DYN with the PIE flag;
  - full RELRO: a GNU_RELRO segment and BIND_NOW (FLAGS BIND_NOW or FLAGS_1 NOW), so the
    GOT is read-only once the program runs;
  - stack protector: __stack_chk_fail imported;
  - _FORTIFY_SOURCE: some __*_chk libc function imported (every program calls snprintf
    with a buffer of known size). Not in the ASan build (libasan linked), which leaves
    _FORTIFY_SOURCE out on purpose (see the Makefile); there the check is that no
    __*_chk function is imported, i.e. that the rule is what the Makefile says.
"""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402

PROGS = ("splitter", "scanner-runner", "router", "spoold", "spoolctl", "lmtpd", "connector-smtp",
         "connector-maildir")


def readelf(*args):
    r = subprocess.run(["readelf", "-W"] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, "readelf %s: %s" % (" ".join(args), r.stderr.decode()[-500:])
    return r.stdout.decode(errors="replace")


def binaries():
    res = [harness.bin_path(p) for p in PROGS]
    units = os.path.join(harness.BIN, "..", "tests")
    if os.path.isdir(units):
        res += sorted(os.path.join(units, f) for f in os.listdir(units)
                      if f.startswith("unit_"))
    return res


def problems(path):
    """What is missing from the binary at path, as a list of strings ([] when hardened)."""
    out = []
    header = readelf("-h", path)
    dynamic = readelf("-d", path)
    segments = readelf("-l", path)
    syms = readelf("--dyn-syms", path)
    if not re.search(r"Type:\s+DYN", header):
        out.append("not PIE (ELF type is not DYN)")
    if not re.search(r"FLAGS_1\).*\bPIE\b", dynamic):
        out.append("no PIE flag in FLAGS_1")
    if "GNU_RELRO" not in segments:
        out.append("no GNU_RELRO segment")
    if not re.search(r"\(FLAGS\).*\bBIND_NOW\b|\(FLAGS_1\).*\bNOW\b", dynamic):
        out.append("no BIND_NOW (partial RELRO only)")
    if "__stack_chk_fail" not in syms:
        out.append("__stack_chk_fail not imported (no stack protector)")
    chk = sorted(set(re.findall(r"\b(__\w+_chk)\b", syms)) - {"__stack_chk_fail"})
    asan = re.search(r"NEEDED.*libasan", dynamic) is not None
    if asan and chk:
        out.append("ASan build imports %s: _FORTIFY_SOURCE is on, against the Makefile"
                   % ", ".join(chk))
    if not asan and not chk:
        out.append("no __*_chk function imported (no _FORTIFY_SOURCE)")
    return out


@test
def binaries_are_hardened():
    if shutil.which("readelf") is None:
        raise AssertionError("readelf not found: install binutils")
    bins = binaries()
    missing = [b for b in bins if not os.path.exists(b)]
    assert not missing, "not built: %s" % ", ".join(missing)
    bad = []
    for b in bins:
        p = problems(b)
        if p:
            bad.append("%s: %s" % (os.path.relpath(b, harness.ROOT), "; ".join(p)))
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    harness.main()
