#!/usr/bin/env python3
"""The verdict cache of a clamd scanner (issue 17): LMDB run/cache.<scanner>.mdb, keyed
by the part's sha256, the scanner and clamd's VERSION line (engine and database).

The clamd here loads a database built with sigtool as an unsigned container (daily.cud)
with a version number, so that its VERSION line names a database version the way the
official daily.cvd does ("ClamAV 1.4.6/5/..."); a clamd with only loose .ndb/.hdb files
reports no database version and is never cached. Real clamd, real binaries; every
Pipeline keeps the delivery invariant.
"""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.clamd import Clamd, command  # noqa: E402
from lib.spool import Pipeline  # noqa: E402

ONE_PART = dict(scan_raw_message=False)
# A signature only the second database has: a marker in the test attachment.
MARKER = b"spoold-farm-cache-marker-" + b"7f3a9c"


def make_cud(dbdir, version, extra_ndb=""):
    """Build dbdir/daily.cud (sigtool --build --unsigned) with the test EICAR body
    signature, plus extra_ndb lines, as database version `version`."""
    work = harness.tmpdir("cud")
    with open(os.path.join(harness.sigdir(), "spoold-test.ndb")) as f:
        ndb = f.read()
    with open(os.path.join(work, "daily.ndb"), "w") as f:
        f.write(ndb if ndb.endswith("\n") else ndb + "\n")
        f.write(extra_ndb)
    with open(os.path.join(work, "COPYING"), "w") as f:
        f.write("spoold test database\n")
    r = subprocess.run(["sigtool", "--datadir=" + work, "--build=daily.cud", "--unsigned",
                        "--cvd-version=%d" % version, "--no-cdiff"], cwd=work,
                       input=b"spoold-tests\n", stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    out = os.path.join(work, "daily.cud")
    assert r.returncode == 0 and os.path.exists(out), r.stdout.decode(errors="replace")[-2000:]
    os.makedirs(dbdir, exist_ok=True)
    tmp = os.path.join(dbdir, ".daily.cud.tmp")
    shutil.copyfile(out, tmp)
    os.rename(tmp, os.path.join(dbdir, "daily.cud"))


def cache_scanner(addr, **kw):
    d = dict(name="clamd", type="clamd", addresses=[addr], stream_max_length=10 << 20,
             timeout=10, max_concurrent=2)
    d.update(kw)
    return d


def verdict_lines(path):
    """The scan lines of an entry: its verdicts file if kept, else its trace."""
    for name in ("verdicts", "trace"):
        try:
            with open(os.path.join(path, name), errors="replace") as f:
                return [l for l in f.read().splitlines() if "scan part=" in l]
        except FileNotFoundError:
            continue
    return []


def stats(p):
    d = os.path.join(p.spool, "run", "stats")
    text = ""
    for n in os.listdir(d) if os.path.isdir(d) else []:
        try:
            with open(os.path.join(d, n)) as f:
                text += f.read()
        except OSError:
            pass
    return text


def counter(p, result):
    total = 0
    for m in re.finditer(r'spoold_cache_lookups_total\{[^}]*result="%s"[^}]*\} (\d+)' % result,
                         stats(p)):
        total += int(m.group(1))
    return total


def attachment_mail(payload, subject):
    return msgs.with_attachment(payload, filename="report.txt", ctype="text/plain",
                                subject=subject)


def wait_places(p, n, timeout=120):
    return {q: (place, path) for place, q, path in p.wait_final(n, timeout=timeout)}


@test
def cache_answers_a_part_seen_before_and_says_cached():
    db = harness.tmpdir("db")
    make_cud(db, 5)
    with Clamd(harness.tmpdir("cd"), db) as cd:
        assert re.match(r"ClamAV [\d.]+/5/", command(cd.unix_addr, "VERSION")), \
            command(cd.unix_addr, "VERSION")
        p = Pipeline(scanners=[cache_scanner(cd.unix_addr)], splitter=ONE_PART).start()
        payload = b"quarterly figures, nothing to see\n" * 50
        p.drop("first", attachment_mail(payload, "first"))
        first = wait_places(p, 1)
        assert [v[0] for v in first.values()] == ["outbox/smtp"], first
        assert counter(p, "hit") == 0, stats(p)
        p.drop("second", attachment_mail(payload, "second"))
        both = wait_places(p, 2)
        (q2,) = set(both) - set(first)
        assert both[q2][0] == "outbox/smtp", both
        wait_for(lambda: counter(p, "hit") >= 1, timeout=20,
                 what="a cache hit in the metrics\n" + stats(p)[-2000:])
        assert os.path.exists(os.path.join(p.spool, "run", "cache.clamd.mdb"))
        # The verdict record that travels with the message (its trace) says cached=1 and
        # names the database version the cache entry is keyed by.
        lines = verdict_lines(both[q2][1])
        assert lines and all(" cached=1" in l for l in lines), lines
        assert all(re.search(r"version=ClamAV\\x20[\d.]+/5/", l) for l in lines), lines
        (q1,) = first
        assert not any("cached=1" in l for l in verdict_lines(first[q1][1]))


@test
def cache_is_void_after_a_database_change_and_reload():
    db = harness.tmpdir("db")
    make_cud(db, 5)
    with Clamd(harness.tmpdir("cd"), db) as cd:
        p = Pipeline(scanners=[cache_scanner(cd.unix_addr)], splitter=ONE_PART).start()
        payload = b"harmless today\n" + MARKER + b"\n" + b"padding line\n" * 20
        p.drop("before", attachment_mail(payload, "before"))
        first = wait_places(p, 1)
        assert [v[0] for v in first.values()] == ["outbox/smtp"], first
        p.drop("again", attachment_mail(payload, "again"))
        wait_places(p, 2)
        wait_for(lambda: counter(p, "hit") >= 1, timeout=20,
                 what="the part cached clean\n" + stats(p)[-2000:])
        hits = counter(p, "hit")
        # The outside agent (connector type none) drains these two: they left while the
        # marker was not a signature yet, which is right, and the invariant below judges
        # the outbox by the newest database.
        for c, q in p.outbox():
            shutil.rmtree(os.path.join(p.spool, "outbox", c, q))
        # A new database version with a signature for the marker, and a clamd RELOAD.
        make_cud(db, 6, "Spoold.Test.Farm.Marker:0:*:%s\n" % MARKER.hex())
        assert command(cd.unix_addr, "RELOAD") == "RELOADING"
        wait_for(lambda: "/6/" in command(cd.unix_addr, "VERSION"), timeout=60,
                 what="clamd to load database version 6")
        p.drop("after", attachment_mail(payload, "after"))
        places = wait_places(p, 1)
        new = [v for q, v in places.items() if v[0] == "quarantine"]
        assert len(new) == 1, ("the cached-clean part was not rescanned under database 6",
                               places, p.logtext()[-2000:])
        assert counter(p, "hit") == hits, "served from the cache after the database changed"
    p.stop()


@test
def cache_corrupt_file_is_only_a_cache():
    db = harness.tmpdir("db")
    make_cud(db, 5)
    with Clamd(harness.tmpdir("cd"), db) as cd:
        p = Pipeline(scanners=[cache_scanner(cd.unix_addr)], splitter=ONE_PART)
        run = os.path.join(p.spool, "run")
        os.makedirs(run, exist_ok=True)
        with open(os.path.join(run, "cache.clamd.mdb"), "wb") as f:
            f.write(b"\xff" * 65536)
        p.start()
        p.drop("clean", attachment_mail(b"plain words\n" * 10, "clean"))
        p.drop("virus", msgs.eicar_attachment())
        places = sorted(v[0] for v in wait_places(p, 2).values())
        assert places == ["outbox/smtp", "quarantine"], (places, p.logtext()[-2000:])
        assert "starting it afresh" in p.logtext() or "cannot open the verdict cache" in \
            p.logtext(), p.logtext()[-2000:]


@test
def cache_off_per_scanner_and_never_for_a_clamd_without_database_version():
    # cache = false: no file, no lookups.
    db = harness.tmpdir("db")
    make_cud(db, 5)
    with Clamd(harness.tmpdir("cd"), db) as cd:
        p = Pipeline(scanners=[cache_scanner(cd.unix_addr, cache=False)],
                     splitter=ONE_PART).start()
        for i in range(2):
            p.drop("m%d" % i, attachment_mail(b"same bytes\n" * 10, "m%d" % i))
        wait_places(p, 2)
        assert counter(p, "hit") == 0 and counter(p, "miss") == 0, stats(p)
        assert not os.path.exists(os.path.join(p.spool, "run", "cache.clamd.mdb"))
        p.stop()
    # Loose signature files: VERSION names no database version, so nothing is cached.
    with Clamd(harness.tmpdir("cd2"), harness.sigdir()) as cd:
        p = Pipeline(scanners=[cache_scanner(cd.unix_addr)], splitter=ONE_PART).start()
        for i in range(2):
            p.drop("n%d" % i, attachment_mail(b"same bytes\n" * 10, "n%d" % i))
        wait_places(p, 2)
        assert counter(p, "hit") == 0 and counter(p, "miss") == 0, stats(p)


@test
def cache_never_used_by_a_degraded_scanner():
    # clamd without AlertEncrypted answers OK for an encrypted zip: the canary degrades
    # the scanner, and what it says is neither stored nor served.
    db = harness.tmpdir("db")
    make_cud(db, 5)
    with Clamd(harness.tmpdir("cd"), db, extra={"AlertEncrypted": None}) as cd:
        p = Pipeline(scanners=[cache_scanner(cd.unix_addr)], splitter=ONE_PART).start()
        wait_for(lambda: "failed its canary" in p.logtext(), timeout=60,
                 what="the canary to fail\n" + p.logtext()[-2000:])
        for i in range(2):
            p.drop("d%d" % i, attachment_mail(b"same bytes\n" * 10, "d%d" % i))
        places = sorted(v[0] for v in wait_places(p, 2).values())
        assert places == ["hold", "hold"], places
        import time
        time.sleep(1.5)  # the metrics files are rewritten about once a second
        assert counter(p, "hit") == 0 and counter(p, "miss") == 0, stats(p)


if __name__ == "__main__":
    harness.main()
