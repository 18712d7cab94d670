#!/usr/bin/env python3
"""Short, bounded libFuzzer runs of the MIME extractor (fuzz_mime; the long run is
`make fuzz`), of the strip path (fuzz_strip: split, flag, cut, re-split; the long run is
`make -f tests/fuzz/fuzz.mk run-strip`) and of lmtpd's protocol state machine
(fuzz_smtp), seeded from generated inputs and, for the MIME ones, ../shared/corpus."""
import base64
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402



_build = []


def _fuzz_targets():
    """Build the fuzz targets once per run of this file (tests/fuzz/fuzz.mk)."""
    if "asan" not in (harness.BIN or ""):
        harness.skip("runs once, with the ASan build")
    if not shutil.which("clang"):
        harness.skip("clang not installed")
    if not _build:
        out = harness.tmpdir("fuzzbuild")
        r = harness.run(["make", "-s", "-f", "tests/fuzz/fuzz.mk", "O=" + out, "build"],
                        timeout=600, cwd=harness.ROOT)
        assert r.returncode == 0, r.out[-3000:]
        _build.append(os.path.join(out, "fuzz"))
    return _build[0]


def _fuzz_short_run(target, samples, corpus=True, max_len=131072, limits=None):
    """FUZZ_SECONDS_CI (30) seconds of target, seeded with samples (and the shared corpus
    where present), failing on any crash, leak, timeout or out-of-memory artifact."""
    fuzzdir = _fuzz_targets()
    out = harness.tmpdir(target)
    seeds = os.path.join(out, "seeds")
    os.mkdir(seeds)
    for i, m in enumerate(samples):
        with open(os.path.join(seeds, "seed%d" % i), "wb") as f:
            f.write(m)
    dirs = [seeds]
    shared = os.path.join(harness.ROOT, "..", "shared", "corpus", "msgs")
    if corpus and os.path.isdir(shared):
        dirs.append(shared)
    secs = os.environ.get("FUZZ_SECONDS_CI", "30")
    os.makedirs(os.path.join(out, "work"))
    r = harness.run([os.path.join(fuzzdir, target), os.path.join(out, "work")] + dirs +
                    ["-max_total_time=" + secs, "-timeout=10", "-max_len=%d" % max_len,
                     "-artifact_prefix=" + out + "/"] + (limits or ["-rss_limit_mb=2048"]),
                    timeout=int(secs) + 300, cwd=out)
    crashes = [f for f in os.listdir(out) if f.startswith(("crash-", "leak-", "timeout-", "oom-"))]
    assert r.returncode == 0 and not crashes, "fuzzer found %s: %s" % (crashes, r.out[-3000:])
    assert "Done" in r.out, r.out[-2000:]


@test(timeout=600)
def fuzz_mime_short_run():
    _fuzz_short_run("fuzz_mime", [
        msgs.clean(), msgs.eicar_attachment(), msgs.multipart(5), msgs.nested_rfc822(),
        msgs.uuencoded(b"\x00\x01binary" * 50), msgs.eicar_inline_text()])


@test(timeout=600)
def fuzz_strip_short_run():
    eicar64 = base64.b64encode(msgs.eicar())
    # the issue 14 sample: a quoted ';' in a Content-Type parameter
    quoted = (b'From: a@example.com\nTo: b@example.org\nMIME-Version: 1.0\n'
              b'Content-Type: multipart/mixed; foo="z;boundary=Q"; boundary=X\n\n'
              b'--X\nContent-Type: text/plain\n\nhello\n--Q"\n\ntext\n--Q"--\n'
              b'--X\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64'
              b'\n\n' + eicar64 + b'\n--X--\n')
    samples = [quoted, msgs.clean(), msgs.eicar_attachment(), msgs.multipart(5),
               msgs.nested_rfc822(), msgs.eicar_attachment(crlf=True), msgs.eicar_inline_text()]
    # The first byte chooses parts to flag (bit i % 8 flags part i). One input may
    # allocate at most 2 GB at once (-malloc_limit_mb: a single huge allocation is a
    # finding, with its stack); the process as a whole may grow to 4 GB: split, strip and
    # split again under ASan, with its quarantine, passed 2 GB once in six 30 s runs
    # without any single large allocation (docs/FUZZING.md).
    _fuzz_short_run("fuzz_strip", [bytes([sel]) + m for m in samples for sel in (0, 0x02, 0xff)],
                    limits=["-rss_limit_mb=4096", "-malloc_limit_mb=2048"])


@test(timeout=600)
def fuzz_smtp_short_run():
    """lmtpd's SMTP/LMTP state machine: client bytes whole and in chunks (fuzz_smtp.c)."""
    body = msgs.eicar_attachment().replace(b"\n", b"\r\n")
    _fuzz_short_run("fuzz_smtp", [
        b"LHLO x\r\nXFORWARD NAME=a ADDR=192.0.2.1 PROTO=ESMTP\r\n"
        b"MAIL FROM:<a@b> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\n"
        b"DATA\r\n" + body + b"..dot\r\nbare\n.\nlf\r\n.\r\nRSET\r\nQUIT\r\n",
        b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\n"
        b"HELO y\r\nMAIL FROM:<a@b> SIZE=7\r\nMAIL FROM:<a@b> SIZE=13\r\n",
        b"LHLO x\r\n" + b"NOOP " + b"x" * 600 + b"\r\nVRFY\r\nMAIL FROM:<a b>\r\n"],
        corpus=False, max_len=65536)


if __name__ == "__main__":
    harness.main()
