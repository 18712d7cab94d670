"""Test messages, as bytes. Deterministic: fixed Date, Message-ID from a per-process
counter, fixed MIME boundaries, LF line endings (crlf=True for CRLF).

Every builder takes the common keyword arguments
    subject="...", to=["rcpt@example.org"], frm="sender@example.com", cc=None,
    headers=None (dict or list of (name, value) added to the top level), crlf=False

    clean(body=...)                         text/plain
    with_attachment(data, filename, ctype)  multipart/mixed: text + base64 attachment
    eicar_attachment()                      attachment eicar.com (application/octet-stream)
    eicar_inline_text()                     text/plain, 7bit, EICAR inside a text line
    multipart(n_parts)                      multipart/mixed with n_parts leaf parts
    nested_rfc822()                         text + message/rfc822 that has an EICAR attachment
    uuencoded(data, name="data.bin")        text/plain whose body holds a "begin 644" block
    queue_file(sender, rcpts, msg)          SPOOLD-QUEUE-FILE 1 envelope + msg
    drop(inbound_dir, name, data)           write a file into inbound/ atomically
    eicar()                                 the 68-byte EICAR test file

The EICAR string is assembled from two halves so that no file of this repository
contains it (scanners would flag the repository itself).
"""

import binascii
import email.policy
import itertools
import os
from email.message import EmailMessage

_EICAR_A = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-"
_EICAR_B = r"ANTIVIRUS-TEST-FILE!$H+H*"

DATE = "Fri, 01 Jan 2021 00:00:00 +0000"
_ids = itertools.count(1)


def eicar():
    """The 68-byte EICAR test file."""
    b = (_EICAR_A + _EICAR_B).encode("ascii")
    assert len(b) == 68
    return b


def _policy(crlf):
    # max_line_length=78 as usual; utf8=False keeps headers 7-bit.
    return email.policy.default.clone(linesep="\r\n" if crlf else "\n")


def _base(subject="spoold test", to=("rcpt@example.org",), frm="sender@example.com",
          cc=None, headers=None, msgid=None):
    m = EmailMessage()
    m["From"] = frm
    if isinstance(to, str):
        to = [to]
    if to:
        m["To"] = ", ".join(to)
    if cc:
        m["Cc"] = ", ".join([cc] if isinstance(cc, str) else cc)
    m["Subject"] = subject
    m["Date"] = DATE
    m["Message-ID"] = msgid or "<spoold-test-%d@example.test>" % next(_ids)
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    for k, v in items:
        m[k] = v
    return m


def _normalize(m):
    """Give every multipart (nested ones too) a fixed boundary, numbered in walk order,
    and drop the MIME-Version header that EmailMessage puts on every body part (only a
    message, outer or message/rfc822, keeps it)."""
    n = 0
    for part in m.walk():
        if part.get_content_maintype() == "multipart":
            n += 1
            part.set_boundary("=_spoold_test_boundary_%d" % n)
            for child in part.iter_parts():
                del child["MIME-Version"]
    return m


def _bytes(m, crlf):
    _normalize(m)
    return m.as_bytes(policy=_policy(crlf))


def _split_common(kw):
    common = {k: kw.pop(k) for k in ("subject", "to", "frm", "cc", "headers", "msgid") if k in kw}
    crlf = kw.pop("crlf", False)
    if kw:
        raise TypeError("unexpected arguments: %s" % ", ".join(sorted(kw)))
    return common, crlf


def clean(body="Hello,\n\nthis is a clean test message.\n", **kw):
    """A simple text/plain message."""
    common, crlf = _split_common(kw)
    m = _base(**common)
    m.set_content(body)
    return _bytes(m, crlf)


def _mixed(text, attachments, common):
    """attachments: list of (data, filename, ctype)."""
    m = _base(**common)
    m.set_content(text)
    for data, filename, ctype in attachments:
        if isinstance(data, str):
            data = data.encode()
        maintype, _, subtype = ctype.partition("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                         filename=filename, cte="base64")
    return m


def with_attachment(data, filename="attachment.bin", ctype="application/octet-stream",
                    text="See the attachment.\n", **kw):
    """multipart/mixed: a text/plain part, then data as a base64 attachment."""
    common, crlf = _split_common(kw)
    return _bytes(_mixed(text, [(data, filename, ctype)], common), crlf)


def eicar_attachment(filename="eicar.com", **kw):
    """multipart/mixed with the EICAR test file as a base64 attachment named eicar.com."""
    kw.setdefault("subject", "eicar attachment")
    return with_attachment(eicar(), filename, "application/octet-stream", **kw)


def eicar_inline_text(**kw):
    """text/plain (7bit) with EICAR embedded in the middle of a text line, so only a
    body signature that matches anywhere (spoold-test.ndb) finds it."""
    kw.setdefault("subject", "eicar inline")
    common, crlf = _split_common(kw)
    m = _base(**common)
    body = ("Hello,\n\nthe next line embeds the test string:\n"
            "see " + eicar().decode("ascii") + " here\n\nbye\n")
    m.set_content(body, cte="7bit")
    return _bytes(m, crlf)


def multipart(n_parts, **kw):
    """multipart/mixed with n_parts leaf parts (n_parts >= 1): a text/plain body, then
    attachments part-2.txt ... part-N.txt (text/plain, base64, distinct contents)."""
    if n_parts < 1:
        raise ValueError("n_parts must be >= 1")
    kw.setdefault("subject", "%d parts" % n_parts)
    common, crlf = _split_common(kw)
    atts = [("this is part %d of %d\n" % (i, n_parts), "part-%d.txt" % i, "text/plain")
            for i in range(2, n_parts + 1)]
    m = _mixed("part 1 of %d\n" % n_parts, atts, common)
    if n_parts == 1:
        m.make_mixed()
    return _bytes(m, crlf)


def nested_rfc822(inner_attachment=None, filename="eicar.com", **kw):
    """multipart/mixed: a text part, then a message/rfc822 attachment which itself is
    multipart/mixed with a base64 attachment (EICAR unless inner_attachment is given)."""
    kw.setdefault("subject", "forwarded message")
    common, crlf = _split_common(kw)
    inner_common = {"subject": "inner message with attachment",
                    "to": ["inner-rcpt@example.org"], "frm": "inner@example.net"}
    data = eicar() if inner_attachment is None else inner_attachment
    inner = _mixed("The inner message.\n", [(data, filename, "application/octet-stream")],
                   inner_common)
    outer = _base(**common)
    outer.set_content("A message is attached.\n")
    outer.add_attachment(inner, filename="forwarded.eml")
    return _bytes(outer, crlf)


def uuencode_block(data, name="data.bin", mode="644"):
    """A "begin MODE NAME" ... "end" block, as text, with a trailing newline."""
    if isinstance(data, str):
        data = data.encode()
    lines = ["begin %s %s" % (mode, name)]
    for i in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[i:i + 45], backtick=True).decode("ascii").rstrip("\n"))
    lines.append("`")
    lines.append("end")
    return "\n".join(lines) + "\n"


def uuencoded(data, name="data.bin", **kw):
    """text/plain (7bit) whose body contains a uuencoded block of data named name."""
    kw.setdefault("subject", "uuencoded %s" % name)
    common, crlf = _split_common(kw)
    m = _base(**common)
    body = "Hello,\n\nthe file follows.\n\n" + uuencode_block(data, name) + "\nbye\n"
    m.set_content(body, cte="7bit")
    return _bytes(m, crlf)


def _b(x):
    return x if isinstance(x, bytes) else x.encode("utf-8", "surrogateescape")


def queue_file(sender, rcpts, msg):
    """The inbound queue-file format (docs/INTERNALS.md):
    "SPOOLD-QUEUE-FILE 1\\n", "S<sender>\\n", one "R<rcpt>\\n" per recipient, "E\\n", msg.
    sender "" is the null sender. No validation, so tests can build bad ones too."""
    if isinstance(rcpts, (str, bytes)):
        rcpts = [rcpts]
    out = [b"SPOOLD-QUEUE-FILE 1\n", b"S" + _b(sender) + b"\n"]
    out += [b"R" + _b(r) + b"\n" for r in rcpts]
    out.append(b"E\n")
    return b"".join(out) + _b(msg)


def envelope(sender, rcpts):
    """The envelope file contents for sender and rcpts (queue-file records without the
    first line and the message)."""
    return queue_file(sender, rcpts, b"")[len(b"SPOOLD-QUEUE-FILE 1\n"):]


def drop(inbound_dir, name, data):
    """Write data as inbound_dir/name the way a well-behaved producer does: into
    ".name.tmp" (ignored by the splitter: it starts with "."), fsync, then rename.
    Returns the final path."""
    if "/" in name or name.startswith("."):
        raise ValueError("bad inbound name %r" % name)
    tmp = os.path.join(inbound_dir, "." + name + ".tmp")
    final = os.path.join(inbound_dir, name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(_b(data))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    return final
