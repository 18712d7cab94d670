"""The shared acceptance corpus (../shared/corpus): where it is, and its messages.

Both the conformance test (t_corpus) and the differential test (t_differential) read the
same inputs, labelled the way ../shared/corpus/oracle.py labels them, so that a label in
one test's output means the same message in the other's and in the oracle's."""

import mailbox
import os

from . import ROOT

CORPUS = os.path.normpath(os.path.join(ROOT, "..", "shared", "corpus"))


def corpus_inputs(tmp):
    """[(label, path)]: every file under msgs/, then every message of every mbox under
    mbox/ written to its own file in tmp (label "<mbox path>#<index>", as oracle.py --mbox
    gives it). A file under mbox/ that is not an mbox is passed over, as the oracle does."""
    out = []
    for root, dirs, files in os.walk(os.path.join(CORPUS, "msgs")):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            out.append((os.path.relpath(p, CORPUS), p))
    for root, dirs, files in os.walk(os.path.join(CORPUS, "mbox")):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            try:
                mb = mailbox.mbox(p, create=False)
                keys = list(mb.iterkeys())
            except Exception:
                continue
            for i, key in enumerate(keys):
                q = os.path.join(tmp, "m%d" % len(out))
                with open(q, "wb") as fh:
                    fh.write(mb.get_bytes(key))
                out.append(("%s#%d" % (os.path.relpath(p, CORPUS), i), q))
    return out
