#!/usr/bin/env python3
"""Chaos run: push N messages through the running pipeline (bin/spoold, a real clamd)
while killing random stages, and spoold itself, with SIGKILL at random intervals. At the
end every message must be in exactly one final place - the right one for its content -
with no duplicate and no loss, and everything in an outbox, rescanned whole and re-split
into parts, must be clean (tests/lib/spool.py assert_delivered_clean).

    tests/chaos.py --bin DIR [--messages N] [--seed S] [--kill-every SECONDS]

The mix: clean single-recipient, clean with recipients on two connectors, infected,
multi-part clean, and broken (empty) files; half injected with spoolctl inject, half
dropped into inbound/. Prints one line of figures:
    chaos: messages=N kills=K lost=0 duplicated=0 misrouted=0 in_flight=0 unclean=0 seconds=S
and exits 1 if anything was lost, duplicated, misrouted or delivered unclean.
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import msgs  # noqa: E402
from lib.clamd import Clamd  # noqa: E402
from lib.spool import Pipeline, assert_delivered_clean, outbox_messages  # noqa: E402

KINDS = ("clean", "split", "infected", "multipart", "empty")


def build(i, kind):
    tok = "chaos-token-%06d" % i
    if kind == "clean":
        return msgs.clean(subject=tok, to=["u%d@example.org" % i]), {"outbox/smtp"}
    if kind == "split":
        return (msgs.clean(subject=tok, to=["u%d@example.org" % i, "u%d@local.example" % i]),
                {"outbox/smtp", "outbox/local"})
    if kind == "infected":
        return msgs.eicar_attachment(subject=tok), {"quarantine"}
    if kind == "multipart":
        return msgs.multipart(4, subject=tok), {"outbox/smtp"}
    return b"", {"badmail"}


def run(bindir, n, seed=1, kill_every=0.4, out=print, timeout=600):
    harness.BIN = os.path.abspath(bindir)
    os.environ["TEST_BIN"] = harness.BIN
    rnd = random.Random(seed)
    t0 = time.monotonic()
    clamd = Clamd(harness.tmpdir("chaos-clamd"), harness.sigdir())
    p = Pipeline(scanners=[dict(name="clamd", type="clamd", addresses=[clamd.unix_addr],
                                timeout=30, max_concurrent=4)],
                 connectors=[dict(name="local", domains=["local.example"]),
                             dict(name="smtp", domains=["*"])],
                 router=dict(default_connector="smtp", hold_retry_min=1, hold_retry_max=2),
                 runner=dict(instances=2), rescan_interval=2,
                 invariant="run() checks the delivered mail itself, as part of its audit")
    p.start()
    expected = {}  # token -> (set of places, bytes)
    empties = set()
    kills = 0
    stop = threading.Event()

    def killer():
        nonlocal kills
        while not stop.wait(rnd.uniform(kill_every / 2, kill_every * 1.5)):
            try:
                if rnd.random() < 0.15:
                    # spoold itself: its stages are orphaned and keep working; a new
                    # spoold starts a second set beside them, which the protocol allows.
                    p.proc.kill()
                    p.proc.wait()
                    kills += 1
                    p.start_again()
                    continue
                pids = [s["pid"] for s in p.status_file() if s["pid"] > 0]
                if pids:
                    os.kill(rnd.choice(pids), signal.SIGKILL)
                    kills += 1
            except (ProcessLookupError, FileNotFoundError):
                pass

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    for i in range(n):
        kind = rnd.choice(KINDS)
        data, places = build(i, kind)
        name = "m%06d" % i
        if kind == "empty":
            open(os.path.join(p.spool, "inbound", name), "wb").close()
            empties.add(name)
            continue
        expected["chaos-token-%06d" % i] = (places, data)
        if i % 2 == 0:
            p.drop(name, data)
        else:
            rcpts = ["u%d@example.org" % i] + (["u%d@local.example" % i] if kind == "split" else [])
            r = p.ctl("inject", "-f", "chaos@example.com", *rcpts, stdin=data)
            if r.returncode != 0:
                raise AssertionError("inject failed: " + r.out)
        if i % 20 == 0:
            time.sleep(0.05)
    # let the killer run a little longer than the intake, then stop it
    time.sleep(min(5, kill_every * 5))
    stop.set()
    th.join()
    if p.proc.poll() is not None:
        p.start_again()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.in_flight() == 0 and not p.entries("hold"):
            break
        time.sleep(0.2)

    # audit
    found = {}
    bad_empty = []
    for place, qid, path in p.finals():
        try:
            data = open(os.path.join(path, "message"), "rb").read()
        except (FileNotFoundError, IsADirectoryError):
            data = b""
        tok = None
        for line in data.split(b"\n", 12):
            if line.startswith(b"Subject: chaos-token-"):
                tok = line[len(b"Subject: "):].decode()
        if tok is None:
            if place == "badmail":
                origin = open(os.path.join(path, "origin"), "rb").read().decode().strip()
                found.setdefault("empty:" + origin, []).append((place, qid))
            else:
                bad_empty.append((place, qid))
            continue
        found.setdefault(tok, []).append((place, qid))
    lost = duplicated = misrouted = 0
    problems = []
    for tok, (places, data) in expected.items():
        got = found.get(tok, [])
        if not got:
            lost += 1
            problems.append("lost " + tok)
            continue
        kinds = [g[0] for g in got]
        if len(set(g[1] for g in got)) > 1 or len(kinds) != len(set(kinds)):
            duplicated += 1
            problems.append("duplicated %s: %s" % (tok, got))
        elif set(kinds) != places:
            misrouted += 1
            problems.append("misrouted %s: %s, want %s" % (tok, kinds, sorted(places)))
    for name in empties:
        got = found.get("empty:" + name, [])
        if len(got) == 0:
            lost += 1
            problems.append("lost empty file " + name)
        elif len(got) > 1:
            duplicated += 1
            problems.append("duplicated empty file %s: %s" % (name, got))
    if bad_empty:
        misrouted += len(bad_empty)
        problems.append("unidentified entries: %s" % bad_empty)
    in_flight = p.in_flight() + len(p.entries("hold"))
    # The delivery invariant: everything in an outbox, rescanned whole and re-split, is
    # clean, whatever the kills did to the stages on its way.
    unclean = 0
    try:
        assert_delivered_clean(outbox_messages(p.spool), spool=p.spool)
    except AssertionError as e:
        unclean = 1
        problems.append("delivered mail is not clean: %s" % e)
    secs = time.monotonic() - t0
    out("chaos: messages=%d kills=%d lost=%d duplicated=%d misrouted=%d in_flight=%d "
        "unclean=%d seconds=%.0f"
        % (len(expected) + len(empties), kills, lost, duplicated, misrouted, in_flight,
           unclean, secs))
    for pr in problems[:20]:
        out("  " + pr)
    p.stop()
    p.stop_orphans()
    clamd.stop()
    return lost, duplicated, misrouted + unclean, in_flight, kills


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kill-every", type=float, default=0.4)
    ap.add_argument("--long", action="store_true", help="no time limit on the drain")
    a = ap.parse_args()
    lost, dup, mis, inflight, _ = run(a.bin, a.messages, a.seed, a.kill_every,
                                      timeout=36000 if a.long else 600)
    sys.exit(1 if lost or dup or mis or inflight else 0)


if __name__ == "__main__":
    main()
