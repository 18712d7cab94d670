#!/usr/bin/env python3
"""The delivery invariant itself (tests/lib/spool.py assert_delivered_clean): it must fail
on infected mail, whether clamscan sees the part or only its flagged hash gives it away,
and pass on clean mail. Every Pipeline runs it after each passing test."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import assert_delivered_clean  # noqa: E402


def _fails(messages, **kw):
    try:
        assert_delivered_clean(messages, **kw)
    except AssertionError as e:
        return str(e)
    raise AssertionError("the invariant passed infected mail: %r" % [l for l, _ in messages])


@test
def clean_mail_passes():
    assert_delivered_clean([("a", msgs.clean()), ("b", msgs.multipart(3)),
                            ("c", msgs.with_attachment(b"\0" * 5000))])


@test
def eicar_attachment_fails():
    why = _fails([("a", msgs.clean()), ("b", msgs.eicar_attachment())])
    assert "delivered b" in why, why


@test
def flagged_hash_fails_even_when_clamscan_would_pass():
    # The hash list alone must catch a part: give a payload no signature matches and
    # name it flagged.
    import hashlib
    payload = b"not a virus, but a scanner said so\n" * 10
    why = _fails([("a", msgs.with_attachment(payload))],
                 flagged={hashlib.sha256(payload).hexdigest()})
    assert "hash of a flagged part" in why, why


@test
def eicar_in_nested_message_fails():
    _fails([("a", msgs.nested_rfc822())])


if __name__ == "__main__":
    harness.main()
