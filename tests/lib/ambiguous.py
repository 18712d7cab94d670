"""Messages that mail readers can read in more than one way (issue 14), each with a payload
in every reading that GMime's own reading does not decode.

    for case in ambiguous.cases(eicar_bytes):
        case.name, case.message, case.payloads, case.readings

`payloads` are the distinct payload byte strings placed in the message (EICAR followed by
a line naming the reading, so each has its own sha256 and every one is still found by a
body signature); `readings` says which reader sees which payload. A splitter is right on
a case when every payload is a decoded part of the manifest, or the manifest says the
message is unscannable (and so never clean). docs/CONFORMANCE.md lists the decision for
each kind of ambiguity.

The generator is deterministic: the same payload gives the same bytes.
"""

import base64
import quopri
from collections import namedtuple

Case = namedtuple("Case", "name message payloads readings")

HEAD = ("From: sender@example.com\nTo: rcpt@example.org\nSubject: ambiguous %s\n"
        "Date: Fri, 01 Jan 2021 00:00:00 +0000\nMessage-ID: <amb-%s@example.test>\n"
        "MIME-Version: 1.0\n")


def _payload(eicar, reading):
    return eicar + b"\n# reading: " + reading.encode() + b"\n"


def _b64(data):
    return base64.encodebytes(data).decode()


def _part(payload, filename="payload.com"):
    """A base64 attachment part (headers and body, no delimiter)."""
    return ("Content-Type: application/octet-stream; name=\"%s\"\n"
            "Content-Transfer-Encoding: base64\n\n%s" % (filename, _b64(payload)))


def _text(s="Nothing to see here.\n"):
    return "Content-Type: text/plain; charset=us-ascii\n\n" + s


def _msg(name, headers, body):
    return (HEAD % (name, name) + headers + "\n" + body).encode()


def cases(eicar):
    """Every generated case, for the payload eicar (the EICAR test file's bytes)."""
    out = []

    def add(name, headers, body, readings):
        payloads = [p for p, _ in readings]
        out.append(Case(name, _msg(name, headers, body), payloads,
                        [why for _, why in readings]))

    # --- conflicting Content-Type headers -------------------------------------------
    p1 = _payload(eicar, "first Content-Type (multipart)")
    add("ct-first-multipart-last-text",
        "Content-Type: multipart/mixed; boundary=\"AB\"\nContent-Type: text/plain\n",
        "--AB\n" + _text() + "--AB\n" + _part(p1) + "--AB--\n",
        [(p1, "readers that take the first Content-Type see a multipart with an "
              "attachment; GMime (the last) sees one text/plain leaf")])

    p1 = _payload(eicar, "boundary of the first Content-Type")
    add("ct-two-multiparts-two-boundaries",
        "Content-Type: multipart/mixed; boundary=\"FIRST\"\n"
        "Content-Type: multipart/mixed; boundary=\"LAST\"\n",
        "--FIRST\n" + _part(p1) + "--FIRST--\n--LAST\n" + _text() + "--LAST--\n",
        [(p1, "readers that take the first Content-Type split at FIRST")])

    p1 = _payload(eicar, "octet-stream base64 first Content-Type")
    add("ct-first-leaf-base64-last-multipart",
        "Content-Type: application/octet-stream; name=\"x.com\"\n"
        "Content-Transfer-Encoding: base64\n"
        "Content-Type: multipart/mixed; boundary=\"NEVER\"\n",
        _b64(p1),
        [(p1, "readers that take the first Content-Type decode the body as base64; GMime "
              "sees a multipart whose boundary never comes")])

    # --- conflicting Content-Transfer-Encoding headers ------------------------------
    p1 = _payload(eicar, "first transfer encoding (base64)")
    add("cte-base64-then-7bit",
        "Content-Type: application/octet-stream; name=\"x.com\"\n"
        "Content-Transfer-Encoding: base64\nContent-Transfer-Encoding: 7bit\n",
        _b64(p1),
        [(p1, "readers that take the first encoding decode base64; GMime (the last) "
              "takes the text as it is")])

    # --- boundary parameters ---------------------------------------------------------
    p1 = _payload(eicar, "first boundary parameter")
    add("boundary-duplicate-params",
        "Content-Type: multipart/mixed; boundary=\"Q\"; boundary=\"X\"\n",
        "--Q\n" + _part(p1) + "--Q--\n--X\n" + _text() + "--X--\n",
        [(p1, "readers that take the first boundary split at Q")])

    p1 = _payload(eicar, "boundary inside a quoted parameter")
    add("boundary-inside-quoted-param",
        "Content-Type: multipart/mixed; foo=\"z;boundary=Q\"; boundary=X\n",
        "--Q\n" + _part(p1) + "--Q--\n--X\n" + _text() + "--X--\n",
        [(p1, "a reader that searches for boundary= without quoting sees Q")])

    p1 = _payload(eicar, "RFC 2231 boundary")
    add("boundary-rfc2231-and-plain",
        "Content-Type: multipart/mixed; boundary*=us-ascii''R2231; boundary=PLAIN\n",
        "--R2231\n" + _part(p1) + "--R2231--\n--PLAIN\n" + _text() + "--PLAIN--\n",
        [(p1, "readers of RFC 2231 take R2231, others PLAIN")])

    p1 = _payload(eicar, "RFC 2231 continued boundary")
    add("boundary-continuations-and-plain",
        "Content-Type: multipart/mixed; boundary=\"PLAIN\"; boundary*0=\"CON\"; "
        "boundary*1=\"TINUED\"\n",
        "--CONTINUED\n" + _part(p1) + "--CONTINUED--\n--PLAIN\n" + _text() + "--PLAIN--\n",
        [(p1, "readers of RFC 2231 continuations take CONTINUED, others PLAIN")])

    # --- delimiters in the preamble or the epilogue ----------------------------------
    p1 = _payload(eicar, "prefix delimiter in the preamble")
    add("preamble-prefix-delimiter",
        "Content-Type: multipart/mixed; boundary=\"B\"\n",
        "preamble\n--Bjunk\n" + _part(p1) + "--B\n" + _text() + "--B--\n",
        [(p1, "readers that match the boundary as a prefix take --Bjunk as a delimiter")])

    p1 = _payload(eicar, "part after the close delimiter")
    add("epilogue-parts-after-close",
        "Content-Type: multipart/mixed; boundary=\"B\"\n",
        "--B\n" + _text() + "--B--\nepilogue\n--B\n" + _part(p1) + "--B--\n",
        [(p1, "readers that do not stop at the close delimiter parse the epilogue")])

    p1 = _payload(eicar, "prefix delimiter in the preamble")
    p2 = _payload(eicar, "part after the close delimiter")
    add("preamble-and-epilogue-nested",
        "Content-Type: multipart/mixed; boundary=\"OUT\"\n",
        "--OUT\n" + _text() + "--OUT\nContent-Type: multipart/mixed; boundary=\"IN\"\n\n"
        "--INjunk\n" + _part(p1) + "--IN\n" + _text() + "--IN--\n--IN\n" + _part(p2) +
        "--OUT--\n",
        [(p1, "prefix-matching readers, in a nested multipart"),
         (p2, "readers that go on after the nested close delimiter")])

    # --- transfer-encoded multiparts (RFC 2045 forbids; GMime ignores) ---------------
    p1 = _payload(eicar, "base64-encoded multipart")
    inner = "--E\n" + _text() + "--E\n" + _part(p1) + "--E--\n"
    add("multipart-base64-encoded",
        "Content-Type: multipart/mixed; boundary=\"E\"\nContent-Transfer-Encoding: base64\n",
        _b64(inner.encode()),
        [(p1, "readers that decode before they split see the parts")])

    p1 = _payload(eicar, "quoted-printable hidden delimiter")
    hidden = "=2D=2DQP\n" + _part(p1)
    add("multipart-qp-hidden-delimiter",
        "Content-Type: multipart/mixed; boundary=\"QP\"\n"
        "Content-Transfer-Encoding: quoted-printable\n",
        "preamble\n" + hidden + "--QP\n" + _text() + "--QP--\n",
        [(p1, "readers that decode quoted-printable first see --QP before the payload")])

    # --- parameters that rename a part: the same bytes in every reading ---------------
    p1 = _payload(eicar, "duplicate file names")
    add("filename-duplicates",
        "Content-Type: multipart/mixed; boundary=\"F\"\n",
        "--F\n" + _text() + "--F\nContent-Type: application/octet-stream; name=\"a.txt\"; "
        "name=\"b.com\"\nContent-Disposition: attachment; filename=\"c.txt\"; "
        "filename*=utf-8''d.com\nContent-Transfer-Encoding: base64\n\n" + _b64(p1) +
        "--F--\n",
        [(p1, "every reading names the same bytes differently")])

    p1 = _payload(eicar, "duplicate charsets")
    add("charset-duplicates",
        "Content-Type: text/plain; charset=utf-7; charset=us-ascii\n"
        "Content-Transfer-Encoding: quoted-printable\n",
        quopri.encodestring(p1).decode(),
        [(p1, "charsets only change how the same decoded bytes are shown")])

    # --- inside an attached message -------------------------------------------------
    p1 = _payload(eicar, "epilogue of an attached message")
    att = (HEAD % ("inner", "inner") + "Content-Type: multipart/mixed; boundary=\"M\"\n\n"
           "--M\n" + _text() + "--M--\n--M\n" + _part(p1) + "--M--\n")
    add("attached-message-epilogue",
        "Content-Type: multipart/mixed; boundary=\"TOP\"\n",
        "--TOP\n" + _text() + "--TOP\nContent-Type: message/rfc822\n\n" + att + "--TOP--\n",
        [(p1, "readers that go on after the close delimiter, one message down")])

    return out
