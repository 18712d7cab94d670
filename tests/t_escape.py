#!/usr/bin/env python3
"""Escaping in logs and spoolctl output (issue 14, L4). Sender- and scanner-chosen bytes
(a subject, an attachment's file name, a virus name) carrying ESC sequences, CR and
newlines that spell a forged log line must come out as one log line per event with no
raw control byte, and `spoolctl quarantine list/show` and `spoolctl show/ls` must print
no raw control byte either (a newline only as the end of a line of their own)."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline  # noqa: E402

# The forged line: a log reader that trusts lines would see a delivery that never was.
FORGED = "router[1]: info: qid=forged delivered connector=smtp"
LINE = re.compile(r"^[a-z-]+\[\d+\]: (debug|info|warning|error): ")

# A scanner stand-in that finds the EICAR string and names it with an ESC sequence, a CR,
# a byte >= 0x80 (0x9b is a one-byte CSI) and a forged line after a second CR.
FAKE = r'''#!/usr/bin/python3
import sys
EICAR = (r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-" + r"ANTIVIRUS-TEST-FILE!$H+H*").encode()
out, rc = sys.stdout.buffer, 0
for f in sys.argv[1:]:
    data = open(f, "rb").read()
    if EICAR in data:
        out.write(f.encode() + b": Evil\x1b[31m.Red\x9b2J\rFORGED_LINE FOUND\n")
        rc = 1
    else:
        out.write(f.encode() + b": OK\n")
sys.exit(rc)
'''.replace("FORGED_LINE", FORGED)


def evil_scanner():
    d = harness.tmpdir("fake")
    path = os.path.join(d, "evilav")
    with open(path, "w") as f:
        f.write(FAKE)
    os.chmod(path, 0o755)
    return dict(name="evilav", type="exec", mode="per-attachment", argv=[path, "{file}"],
                clean_codes=[0], infected_codes=[1], virus_regex=": (.+) FOUND$",
                timeout=20, max_concurrent=1, canary=False)


def evil_message():
    # RFC 2047 in the subject and RFC 2231 in the file name decode to ESC, CR and LF.
    return (b"From: s@example.org\nTo: r@example.net\n"
            b"Subject: =?utf-8?q?hi=1B=5B31m_red=0D=0A" +
            FORGED.replace(" ", "_").replace(":", "=3A").encode() + b"?=\n"
            b"Message-ID: <esc1@example.test>\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=\"b\"\n\n"
            b"--b\nContent-Type: text/plain\n\nhello\n"
            b"--b\nContent-Type: application/octet-stream\n"
            b"Content-Disposition: attachment; filename*=utf-8''a%1B%5B31m%0D%0A" +
            FORGED.replace(" ", "%20").replace("[", "%5B").replace("]", "%5D").encode() +
            b"%9B.com\n\n" + msgs.eicar() + b"\n--b--\n")


def assert_no_raw_controls(what, data):
    bad = sorted(set(c for c in data if (c < 0x20 and c not in (0x0a, 0x09)) or c >= 0x7f))
    assert not bad, "%s has raw bytes %s:\n%r" % (what, ["0x%02x" % c for c in bad], data[-1500:])


@test
def hostile_subject_filename_and_virus_name_never_forge_log_lines_or_reach_a_terminal():
    p = Pipeline(scanners=[evil_scanner()])
    p.start()
    p.drop("evil\x1b[31m\nname", evil_message())
    finals = p.wait_final(1)
    assert finals[0][0] == "quarantine", finals
    qid = finals[0][1]
    p.stop()
    with open(p.log, "rb") as f:
        log = f.read()
    assert b"\x1b" not in log and b"\r" not in log and b"\x9b" not in log, log[-2000:]
    for line in log.split(b"\n"):
        if not line:
            continue
        text = line.decode("ascii", "replace")
        assert LINE.match(text), "a line that is not one event: %r" % text
        assert not text.startswith("router[1]:"), "a forged line: %r" % text
    # The virus name did reach the log, escaped, on the scanner's own line.
    assert re.search(rb"virus=Evil\\x1b\[31m\.Red\\x9b2J\\x0drouter", log), log[-2000:]
    for args in (("quarantine", "show", qid), ("quarantine", "list"),
                 ("quarantine", "list", "--json"), ("show", qid), ("ls", "quarantine"),
                 ("ls", "quarantine", "--json")):
        r = harness.run([harness.bin_path("spoolctl"), "-c", p.conf] + list(args),
                        timeout=60)
        assert r.returncode == 0, (args, r.returncode, r.out)
        out = r.stdout
        assert_no_raw_controls("spoolctl " + " ".join(args), out)
        for line in out.split(b"\n"):
            assert not line.startswith(b"router[1]:"), (args, line)


if __name__ == "__main__":
    harness.main()
