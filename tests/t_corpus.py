#!/usr/bin/env python3
"""t_corpus - the MIME extractor against the shared acceptance corpus (../shared/corpus).

Every message of msgs/ and of mbox/ (split per message) is run through
`BIN/splitter -x FILE -o OUTDIR` (mime_extract; the manifest on stdout) and compared with
the reference listing of ../shared/corpus/oracle.py (Python's email package), which is run
once per test run and cached in a temporary file.

  corpus_splits_cleanly    every message: exit 0 (or 1, "not a message"), no crash, no hang
                           (TIMEOUT s each); only NNNN.ATT part files are written, and each
                           part file has the size and sha256 that the manifest says
  corpus_leaves_match      messages for which the oracle reports no defect: every oracle
                           leaf is one of our leaves (same sha256, or same sha256 after
                           CRLF->LF for text and message/* parts) and we have no leaf that
                           the oracle lacks, except for the accepted classes below
  corpus_difference_tally  all messages: prints the remaining differences by class and
                           fails only on a class that is not understood

The classes of difference, and which parser is right, are explained in
docs/CONFORMANCE.md. $SPOOLD_SPLITTER overrides the splitter program (for a driver with
the same command line).
"""
import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import main, skip, test  # noqa: E402
from lib.corpus import CORPUS, corpus_inputs  # noqa: E402

TIMEOUT = 30            # seconds per message
PART_RE = re.compile(r"^[0-9]{4}\.ATT$")
# Files a splitter -x may leave besides the parts (the message it links the raw part to).
ALLOWED_FILES = {"message"}

# Differences we accept, by class (see docs/CONFORMANCE.md). Anything else fails.
ACCEPTED = {
    "over-limit",                       # we marked the message unscannable (a limit)
    "oracle-reserialised",              # the oracle's own hash is approximate
    "leaf-is-our-preamble",             # missing start boundary: body kept as preamble
    "empty-attached-message",           # Python invents an empty leaf
    "empty-part",                       # Python lists an empty part, GMime none
    "python-header-block-ends-early",   # Python ends the header block at a bad line
    "eof-line-end",                     # missing close boundary: last line end at EOF
    "python-did-not-decode",            # Python left the part encoded
    "dirty-base64",                     # decoders skip different garbage
    "qp-decoder",                       # decoders differ on malformed soft breaks
    "extra-reading",                    # we extract more than Python
    "structure",                        # malformed structure read differently
}


# ---------------------------------------------------------------- inputs and caches
_cache = {}


ABSENT = ("the acceptance corpus %s is absent: this test needs the shared folder beside "
          "the checkout (../shared/corpus, as CI lays it out); it is never copied into the "
          "repository" % CORPUS)


def need_corpus():
    # A missing corpus fails loudly: a conformance test that skips where its input is
    # missing would pass unseen on exactly the machines that lack it.
    if not os.path.isdir(CORPUS):
        raise AssertionError(ABSENT)


def splitter():
    p = os.environ.get("SPOOLD_SPLITTER") or harness.bin_path("splitter")
    if not os.path.exists(p):
        skip("%s not built" % p)
    return p


def inputs():
    """[(label, path)] for msgs/ files and mbox/ messages (written to temporary files)."""
    if "inputs" in _cache:
        return _cache["inputs"]
    out = corpus_inputs(harness.tmpdir("mbox"))
    _cache["inputs"] = out
    return out


def oracle():
    """label -> oracle record; oracle.py runs once per test run, cached in a temp file."""
    if "oracle" in _cache:
        return _cache["oracle"]
    tmp = harness.tmpdir("oracle")
    res = {}
    for args, name in ((["msgs"], "msgs.jsonl"), (["--mbox", "mbox"], "mbox.jsonl")):
        path = os.path.join(tmp, name)
        with open(path, "wb") as fh:
            r = subprocess.run([sys.executable, os.path.join(CORPUS, "oracle.py")] + args,
                               cwd=CORPUS, stdout=fh, stderr=subprocess.PIPE, timeout=1800)
        assert r.returncode == 0, "oracle.py %s failed: %s" % (args, r.stderr[-500:])
        with open(path) as fh:
            for line in fh:
                rec = json.loads(line)
                label = rec["file"]
                if label.startswith("./"):
                    label = label[2:]
                res[label] = rec
    _cache["oracle"] = res
    return res


def unescape(v):
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  v.encode("ascii"))


def parse_manifest(text):
    parts, unscannable, end = [], [], None
    for line in text.splitlines():
        if line.startswith("part "):
            toks = line.split(" ")
            p = {"index": int(toks[1])}
            for t in toks[2:]:
                k, _, v = t.partition("=")
                p[k] = unescape(v)
            for k in ("path", "found", "type", "charset", "cte", "sha256"):
                p[k] = p.get(k, b"").decode("latin-1")
            p["size"] = int(p.get("size", b"0"))
            parts.append(p)
        elif line.startswith("unscannable "):
            unscannable.append(unescape(line[12:]).decode("latin-1"))
        elif line.startswith("end "):
            end = int(line[4:])
    return parts, unscannable, end


def split_one(label, path):
    """Run the splitter on one message; the result dict is cached per label."""
    key = ("split", label)
    if key in _cache:
        return _cache[key]
    out = harness.tmpdir("out")
    res = {"label": label, "problems": []}
    try:
        r = subprocess.run([splitter(), "-x", path, "-o", out], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        res["rc"] = "timeout"
        res["problems"].append("no result after %ds" % TIMEOUT)
        _cache[key] = res
        shutil.rmtree(out, ignore_errors=True)
        return res
    res["rc"] = r.returncode
    res["stderr"] = r.stderr.decode(errors="replace")[-500:]
    if r.returncode not in (0, 1):
        res["problems"].append("exit %d: %s" % (r.returncode, res["stderr"].strip()))
    parts, unscannable, end = parse_manifest(r.stdout.decode("latin-1"))
    res["parts"], res["unscannable"] = parts, unscannable
    if r.returncode == 0:
        if end != len(parts):
            res["problems"].append("manifest without a matching end line")
        for f in os.listdir(out):
            if not PART_RE.match(f) and f not in ALLOWED_FILES:
                res["problems"].append("unexpected file %r in the output" % f)
        for p in parts:
            fn = os.path.join(out, "%04d.ATT" % p["index"])
            try:
                with open(fn, "rb") as fh:
                    data = fh.read()
            except OSError as e:
                res["problems"].append("part %d: %s" % (p["index"], e))
                continue
            p["sha_file"] = hashlib.sha256(data).hexdigest()
            p["sha_lf"] = hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()
            p["head"] = data[:64]
            if p["sha_file"] != p["sha256"] or len(data) != p["size"]:
                res["problems"].append("part %d: file does not match its manifest entry"
                                       % p["index"])
    shutil.rmtree(out, ignore_errors=True)
    _cache[key] = res
    return res


# ---------------------------------------------------------------- comparison
def is_textish(ctype):
    return ctype.startswith("text/") or ctype.startswith("message/")


def classify(orec, ours):
    """Differences between the oracle's leaves and ours: [(class, detail)].

    Leaves match on sha256, or on sha256 after CRLF->LF for text and message/* parts.
    What is left is paired by path, then put in a class (docs/CONFORMANCE.md)."""
    diffs = []
    mine = [p for p in ours["parts"] if p["found"] == "leaf"]
    pre = [p for p in ours["parts"] if p["found"] in ("preamble", "epilogue")]
    used = set()
    missing = []
    for o in orec.get("parts", []):
        hit = None
        for i, p in enumerate(mine):
            if i in used:
                continue
            if p["sha_file"] == o["sha256"] or (o.get("sha256_lf") and
                                                p["sha_lf"] == o["sha256_lf"]):
                hit = i
                break
        if hit is not None:
            used.add(hit)
        else:
            missing.append(o)
    extra = [p for i, p in enumerate(mine) if i not in used]
    defects = {d["defect"] for d in orec.get("defects", [])}
    over = [u for u in ours.get("unscannable", []) if u.startswith("over limit")]
    for o in missing:
        notes = " ".join(o.get("note", []))
        ct = o["content_type"]
        same = [p for p in extra if p["path"] == o["path"]]
        p = same[0] if same else None
        if p is not None:
            extra.remove(p)
        detail = "%s %s oracle %d bytes, ours %s" % (o["path"], ct, o["size"],
                                                    p["size"] if p else "-")
        cte = (o.get("cte") or "").lower()
        if over:
            cls = "over-limit"
        elif "re-serialised" in notes:
            cls = "oracle-reserialised"
        elif p is None and o["size"] <= 2:
            # Python lists an empty part (two boundaries in a row, an empty multipart);
            # GMime has no such part: nothing to scan either way
            cls = "empty-part"
        elif ct.startswith("multipart/"):
            # Python keeps the body of a multipart without its start boundary as a leaf;
            # GMime keeps it as the multipart's preamble (with CRLF -> LF)
            cls = "leaf-is-our-preamble" if pre else "structure"
        elif p is None and o["size"] == 0 and o["path"].endswith(".1"):
            cls = "empty-attached-message"
        elif "MissingHeaderBodySeparatorDefect" in defects:
            cls = "python-header-block-ends-early"
        elif p is not None and "CloseBoundaryNotFoundDefect" in defects and \
                abs(o["size"] - p["size"]) <= 2:
            cls = "eof-line-end"
        elif p is not None and cte == "base64" and o["size"] > p["size"] * 1.3:
            cls = "python-did-not-decode"
        elif p is not None and cte == "base64":
            cls = "dirty-base64"
        elif p is not None and cte == "quoted-printable":
            cls = "qp-decoder"
        elif defects:
            cls = "structure"
        else:
            cls = "unexplained-missing" if p is None else "unexplained-bytes"
        diffs.append((cls, detail))
    for p in extra:
        detail = "%s %s %d bytes" % (p["path"], p["type"], p["size"])
        if not missing:
            # every oracle leaf is there: we extract more (e.g. both readings of
            # conflicting headers, parts Python does not see)
            cls = "extra-reading"
        elif over:
            cls = "over-limit"
        elif "MissingHeaderBodySeparatorDefect" in defects:
            cls = "python-header-block-ends-early"
        elif defects:
            cls = "structure"
        else:
            cls = "unexplained-extra"
        diffs.append((cls, detail))
    return diffs


def all_results():
    need_corpus()
    res = []
    for label, path in inputs():
        res.append(split_one(label, path))
    return res


# ---------------------------------------------------------------- tests
@test(timeout=1800)
def corpus_splits_cleanly():
    bad = []
    for r in all_results():
        for p in r["problems"]:
            bad.append("%s: %s" % (r["label"], p))
    n = len(inputs())
    not_msg = sum(1 for r in all_results() if r["rc"] == 1)
    print("    %d messages split, %d reported as not a message" % (n, not_msg))
    assert not bad, "%d problems: %s" % (len(bad), "; ".join(bad[:10]))


@test(timeout=1800)
def corpus_leaves_match():
    orc = oracle()
    bad, clean, exact = [], 0, 0
    for r in all_results():
        o = orc.get(r["label"])
        if o is None or r["rc"] != 0:
            continue
        if o.get("defects") or o.get("error") or o.get("policy") != "default":
            continue
        # (a difference in a defect-free message may not be put down to structure)
        clean += 1
        diffs = classify(o, r)
        if not diffs:
            exact += 1
        for cls, detail in diffs:
            if cls not in ACCEPTED or cls == "structure":
                bad.append("%s: %s %s" % (r["label"], cls, detail))
    print("    %d defect-free messages, %d with identical leaves" % (clean, exact))
    assert not bad, "%d differences not accepted: %s" % (len(bad), "; ".join(bad[:10]))


@test(timeout=1800)
def corpus_difference_tally():
    orc = oracle()
    tally = collections.Counter()
    msgs = collections.Counter()
    examples = {}
    leaves = ours_leaves = unmatched = 0
    kinds = collections.Counter()
    n = 0
    for r in all_results():
        o = orc.get(r["label"])
        if o is None:
            tally["no-oracle-record"] += 1
            continue
        n += 1
        leaves += len(o.get("parts", []))
        for p in r.get("parts", []):
            kinds[p["found"]] += 1
            if p["found"] == "leaf":
                ours_leaves += 1
        if r["rc"] != 0:
            tally["not-a-message (exit %s)" % r["rc"]] += 1
            examples.setdefault("not-a-message (exit %s)" % r["rc"], r["label"])
            continue
        seen = set()
        diffs = classify(o, r)
        unmatched += sum(1 for _, d in diffs if " oracle " in d)
        for cls, detail in diffs:
            tally[cls] += 1
            if cls not in seen:
                msgs[cls] += 1
                seen.add(cls)
            examples.setdefault(cls, "%s %s" % (r["label"], detail))
    print("    %d messages; oracle leaves %d (%d found among our leaves), our leaves %d; "
          "our parts by kind: %s"
          % (n, leaves, leaves - unmatched, ours_leaves,
             ", ".join("%s=%d" % kv for kv in sorted(kinds.items()))))
    for cls, cnt in tally.most_common():
        print("    %-28s %4d parts in %3d messages  e.g. %s"
              % (cls, cnt, msgs[cls], examples.get(cls, "")[:150]))
    unknown = [c for c in tally if c not in ACCEPTED and not c.startswith("not-a-message")]
    assert not unknown, "classes not understood: %s" % ", ".join(unknown)


if __name__ == "__main__":
    if not os.path.isdir(CORPUS):
        print("FAIL corpus: " + ABSENT)
        sys.exit(1)
    main()
