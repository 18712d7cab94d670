#!/usr/bin/env python3
"""The splitter's resource bounds (issue 14): sparse and huge files (M1), decoded-size
bombs (M2), bounded walks over attacker-made directory trees (L11). Real binaries, real
clamscan."""
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


def _manifest_parts(path):
    """[(found, size)] of the part lines of path/manifest, and its unscannable lines."""
    parts, unsc = [], []
    with open(os.path.join(path, "manifest")) as f:
        for line in f:
            if line.startswith("part "):
                kv = dict(t.split("=", 1) for t in line.split()[2:])
                parts.append((kv["found"], int(kv["size"])))
            elif line.startswith("unscannable "):
                unsc.append(line.split(" ", 1)[1].strip().replace("\\x20", " "))
    return parts, unsc


# ---- M1: sparse and huge files ---------------------------------------------------------

@test(timeout=180)
def sparse_terabyte_file_goes_to_badmail_and_blocks_nothing():
    """A 1 TB sparse file in inbound/ (it costs its dropper no space) used to make every
    scan report "spool full" and claim nothing more. It must go to badmail with a reason,
    without being read or copied, and the 5 messages dropped with it are delivered."""
    p = Pipeline(scanners=[clamscan()])
    inbound = os.path.join(p.spool, "inbound")
    os.makedirs(inbound, exist_ok=True)
    tmp = os.path.join(inbound, ".sparse.tmp")
    with open(tmp, "wb") as f:
        f.truncate(1 << 40)
    os.rename(tmp, os.path.join(inbound, "0000"))
    for i in range(5):
        p.drop("m%d" % i, msgs.clean(subject="normal %d" % i))
    t0 = time.monotonic()
    p.start()
    finals = p.wait_final(6, timeout=90)
    took = time.monotonic() - t0
    places = sorted(f[0] for f in finals)
    assert places == ["badmail"] + ["outbox/smtp"] * 5, (places, p.logtext()[-2000:])
    bad = [f for f in finals if f[0] == "badmail"][0]
    reason = p.read(bad[2], "reason").decode()
    assert "over limit (max_message_size)" in reason and "not copied" in reason, reason
    st = os.stat(os.path.join(bad[2], "message"))
    assert st.st_size == 1 << 40 and st.st_blocks * 512 < (1 << 20), \
        "the sparse file was copied or filled: size %d, blocks %d" % (st.st_size, st.st_blocks)
    assert took < 60, "took %.1fs" % took
    assert "is full" not in p.logtext(), p.logtext()[-2000:]


@test
def over_size_message_goes_to_badmail_unparsed():
    p = Pipeline(scanners=[clamscan()], splitter=dict(max_message_size=10000))
    p.drop("big", msgs.with_attachment(os.urandom(20000), "big.bin"))
    p.drop("small", msgs.clean())
    p.pass_all()
    finals = sorted(p.finals())
    assert [f[0] for f in finals] == ["badmail", "outbox/smtp"], finals
    d = finals[0][2]
    assert "over limit (max_message_size)" in p.read(d, "reason").decode()
    # nothing was parsed or written: no parts, no manifest
    assert not [n for n in os.listdir(d) if n.endswith(".ATT") or n == "manifest"], os.listdir(d)


@test
def inject_refuses_input_past_its_bound_and_leaves_nothing():
    """spoolctl inject copies standard input up to twice max_message_size plus 1 MiB (the
    splitter's badmail/ takes what is over max_message_size; past the copy bound the sender
    is told to try again, 75, rather than the spool filled): nothing is left in tmp/ or
    inbound/, and a message under the bound is queued as usual."""
    p = Pipeline(scanners=[clamscan()], splitter=dict(max_message_size=10000))
    p.pass_all()  # the stages make the spool

    def listing():
        return [(d, n) for d in ("tmp", "inbound") for n in os.listdir(os.path.join(p.spool, d))]
    before = listing()
    bound = 2 * 10000 + (1 << 20)
    over = b"Subject: big\n\n" + b"x" * (bound + 70000)
    r = p.ctl("inject", "-f", "a@example.com", "b@example.org", stdin=over)
    assert r.returncode == 75, (r.returncode, r.out)
    assert "File too large" in r.out, r.out
    assert listing() == before, (before, listing())
    under = b"Subject: under\n\n" + b"y" * (bound - 1000)
    q = p.inject("a@example.com", ["b@example.org"], under)
    p.pass_all()
    finals = p.finals()
    # over max_message_size, under the copy bound: queued, then badmail, unparsed
    assert [(f[0], f[1]) for f in finals] == [("badmail", q)], finals


# ---- M2: decoded-size bombs ------------------------------------------------------------

_BINHEX_ALPHA = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"


def _binhex6(data):
    """BinHex 4.0's 6-bit encoding (the run-length coding is the caller's)."""
    out = bytearray()
    bits = nbits = 0
    for b in data:
        bits = (bits << 8) | b
        nbits += 8
        while nbits >= 6:
            nbits -= 6
            out.append(_BINHEX_ALPHA[(bits >> nbits) & 63])
        bits &= (1 << nbits) - 1
    if nbits:
        out.append(_BINHEX_ALPHA[(bits << (6 - nbits)) & 63])
    return bytes(out)


def binhex_rle_bomb(encoded_bytes, name=b"bomb.bin"):
    """A BinHex 4.0 block whose data fork is one byte followed by runs (0x90 0xff: the
    previous byte 254 more times): about 95 decoded bytes per encoded character."""
    pairs = (encoded_bytes * 3 // 4) // 2
    fork = 1 + 254 * pairs
    hdr = (bytes([len(name)]) + name + b"\0" + b"TEXTttxt" + b"\0\0"
           + struct.pack(">II", fork, 0) + b"\0\0")
    assert b"\x90" not in hdr
    enc = _binhex6(hdr + b"A" + b"\x90\xff" * pairs)
    lines = [enc[i:i + 64] for i in range(0, len(enc), 64)]
    return (b"(This file must be converted with BinHex 4.0)\n:" + b"\n".join(lines) + b":\n",
            fork)


@test(timeout=180)
def binhex_rle_bomb_is_stopped_with_bounded_disk_use():
    """A 600 KB message whose BinHex block decodes to about 57 MB (the limits in force
    before: max_part_size 100 MiB, max_total_size 400 MiB, let it all through). The
    decoded bytes stop at max_expansion (8) x the message size + 1 MiB, the manifest says
    why (a retry cannot help), and the message never reaches an outbox."""
    block, fork = binhex_rle_bomb(600 * 1000)
    msg = (b"From: a@example.org\nTo: b@example.org\nSubject: bomb\nMIME-Version: 1.0\n"
           b"Content-Type: text/plain\n\n" + block)
    assert fork > 50 * (1 << 20), fork
    p = Pipeline(scanners=[clamscan()])
    p.drop("bomb", msg)
    r = p.stage("splitter")
    assert r.returncode == 0, r.out
    (q,) = p.entries("scan")
    wd = os.path.join(p.spool, "scan", q)
    parts, unsc = _manifest_parts(wd)
    written = sum(size for found, size in parts if found != "raw")
    on_disk = sum(os.stat(os.path.join(wd, n)).st_blocks * 512 for n in os.listdir(wd)
                  if n.endswith(".ATT") and os.stat(os.path.join(wd, n)).st_nlink == 1)
    bound = 8 * len(msg) + (1 << 20)
    assert written <= bound and on_disk <= bound + (1 << 20), (written, on_disk, bound)
    assert "over limit (max_expansion)" in unsc, unsc
    p.stage("scanner-runner")
    p.stage("router")
    finals = p.finals()
    assert [f[0] for f in finals] in (["hold"], ["quarantine"]), finals


def _free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path, leave):
    """Fill the filesystem of path until about `leave` bytes are free."""
    with open(os.path.join(path, "filler"), "wb") as f:
        todo = max(0, _free(path) - leave)
        while todo > 0:
            n = min(todo, 1 << 20)
            f.write(b"\0" * n)
            f.flush()
            todo -= n


@test(timeout=300)
def decoding_keeps_the_spool_reserve_free():
    """Decoded bytes are counted against the free space while they are written: a bomb
    split on a nearly full spool stops with the 4 MiB reserve still free (the other
    stages need it to move mail on) and the message is deferred, not failed; once there
    is space it is split and marked over the limit. Before, the splitter wrote until
    the disk was full and left the partial parts there."""
    small = harness.mount_tmpfs("24m")
    p = Pipeline(scanners=[clamscan()])
    p.spool = os.path.join(small, "spool")
    with open(p.conf) as f:
        text = f.read()
    with open(p.conf, "w") as f:
        f.write(text.replace('spool_dir = "%s"' % os.path.join(p.dir, "spool"),
                             'spool_dir = "%s"' % p.spool))
    block, _ = binhex_rle_bomb(300 * 1000)
    msg = (b"From: a@example.org\nTo: b@example.org\nSubject: bomb\nMIME-Version: 1.0\n"
           b"Content-Type: text/plain\n\n" + block)
    r = p.stage("splitter")  # makes the spool
    assert r.returncode == 0, r.out
    tmp = os.path.join(small, "bomb")
    with open(tmp, "wb") as f:
        f.write(msg)
    _fill(small, 5 * (1 << 20) + (1 << 19))
    os.rename(tmp, os.path.join(p.spool, "inbound", "bomb"))
    r = p.stage("splitter")
    assert r.returncode == 0, r.out
    free = _free(small)
    assert free >= 3 * (1 << 20), "%d bytes left free:\n%s" % (free, r.out[-2000:])
    assert len(p.entries("incoming")) == 1 and not p.entries("scan"), \
        (p.entries("incoming"), p.entries("scan"), r.out[-2000:])
    assert "deferred" in r.out, r.out[-2000:]
    os.unlink(os.path.join(small, "filler"))
    r = p.stage("splitter")
    assert r.returncode == 0, r.out
    (q,) = p.entries("scan")
    _, unsc = _manifest_parts(os.path.join(p.spool, "scan", q))
    assert "over limit (max_expansion)" in unsc, unsc


@test(timeout=120)
def expansion_limit_leaves_ordinary_attachments_alone():
    """The ratio bound never cuts a plain base64 attachment short (decoding shrinks)."""
    p = Pipeline(scanners=[clamscan()])
    p.drop("big", msgs.with_attachment(os.urandom(3 << 20), "big.bin"))
    p.pass_all()
    finals = p.finals()
    assert [f[0] for f in finals] == ["outbox/smtp"], (finals, p.logtext()[-2000:])


# ---- L11: bounded walks ----------------------------------------------------------------

DEPTH = 10000


def _make_deep(parent, name, depth):
    """parent/name/d/d/.../d, depth levels, made with descriptors (no long paths)."""
    os.mkdir(os.path.join(parent, name))
    fd = os.open(os.path.join(parent, name), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth - 1):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def _remove_deep(path):
    """Remove a tree made by _make_deep (shutil.rmtree would recurse 10,000 deep): 500
    levels at a time, moving what is below them aside as a tree of its own."""
    todo, n = [path], 0
    while todo:
        top = todo.pop()
        if not os.path.isdir(top):
            continue
        fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
        try:
            while True:
                try:
                    fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1])
                except FileNotFoundError:
                    break
                if len(fds) == 500:
                    os.close(fd)
                    n += 1
                    rest = "%s.rest%d" % (path, n)
                    os.rename("d", rest, src_dir_fd=fds[-1])
                    todo.append(rest)
                    break
                fds.append(fd)
            while len(fds) > 1:
                os.close(fds.pop())
                os.rmdir("d", dir_fd=fds[-1])
        finally:
            for fd in fds:
                os.close(fd)
        os.rmdir(top)


@test(timeout=300)
def ten_thousand_deep_tree_in_inbound_stalls_nothing():
    """A 10,000-deep directory dropped into inbound/ goes to badmail (not a regular file);
    the messages around it are delivered; spoolctl status and ls measure it without
    walking it all; deleting it leaves what is past the bound with a clear log line,
    and no stage dies."""
    p = Pipeline(scanners=[clamscan()])
    inbound = os.path.join(p.spool, "inbound")
    os.makedirs(inbound, exist_ok=True)
    _make_deep(inbound, ".deep.tmp", DEPTH)
    os.rename(os.path.join(inbound, ".deep.tmp"), os.path.join(inbound, "deep"))
    harness.cleanup(_remove_deep, os.path.join(inbound, "deep"))
    for i in range(3):
        p.drop("m%d" % i, msgs.clean(subject="normal %d" % i))
    p.start()
    finals = p.wait_final(4, timeout=90)
    places = sorted(f[0] for f in finals)
    assert places == ["badmail"] + ["outbox/smtp"] * 3, places
    bad = [f for f in finals if f[0] == "badmail"][0]
    harness.cleanup(_remove_deep, os.path.join(bad[2], "message"))
    assert "directory" in p.read(bad[2], "reason").decode()
    if p.separated:
        # Another user's directory: the splitter may not move it (that needs write on
        # it), so the tree stays in inbound/ under a dot-name the badmail/ record names.
        aside = ".unclaimable." + bad[1]
        harness.cleanup(_remove_deep, os.path.join(inbound, aside))
        assert os.path.isdir(os.path.join(inbound, aside, "d")), os.listdir(inbound)
        assert "inbound/" + aside in p.read(bad[2], "reason").decode()
    pids = p.stage_pids()
    for args in (("status",), ("ls", "badmail")):
        t0 = time.monotonic()
        r = p.ctl(*args, timeout=30)
        assert r.returncode == 0 and time.monotonic() - t0 < 10, (args, r.returncode, r.out)
    trash = os.path.join(p.spool, "trash")

    def remove_left():
        p.stop()  # no stage empties trash/ while we do
        for n in os.listdir(trash) if os.path.isdir(trash) else []:
            _remove_deep(os.path.join(trash, n, "message"))
    harness.cleanup(remove_left)
    r = p.ctl("delete", bad[1])
    assert r.returncode == 0, r.out
    if not p.separated:
        assert "not removing all of" in r.out and "deeper than 32 levels" in r.out, r.out
        assert bad[1] + ".badmail" in os.listdir(trash), os.listdir(trash)
    assert bad[1] not in p.entries("badmail")
    p.drop("after", msgs.clean(subject="after the tree"))
    p.wait_final(4, timeout=60)
    harness.wait_for(lambda: len(p.outbox()) == 4, timeout=60, what="the message after")
    assert p.stage_pids() == pids, (pids, p.stage_pids())
    # (the delivery check after the test walks the spool with os.walk: not 10,000 deep)
    remove_left()
    if p.separated:
        _remove_deep(os.path.join(inbound, aside))


if __name__ == "__main__":
    harness.main()
