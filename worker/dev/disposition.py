r"""The field name and file name of one multipart/form-data part, read from its Content-Disposition.

One pure function for the sandbox (header bytes in, names out; no I/O), reading what
browsers, requests/urllib3, curl ≥ 7.81 and this project's worker actually send:

- raw UTF-8 between the quotes (RFC 7578 §4.2, HTML5). Bytes that are not valid UTF-8
  are read as latin-1, as legacy clients meant them, so no name is refused for its
  encoding;
- the HTML5 form encoding: ``"``, CR and LF arrive as ``%22``, ``%0D``, ``%0A`` and are
  decoded back. Nothing else is percent-decoded (a name holding a literal ``%41`` keeps
  it) and a backslash is an ordinary character, as in HTML5. The one exception, for
  senders that backslash-escape instead (Go's mime/multipart, curl before 7.81): ``\"``
  inside the quotes is read as ``"``, since an HTML5 sender never puts a quote there.
  Their ``\\`` stays two backslashes: it cannot be told from an HTML5 name holding two;
- ``filename*=charset'lang'percent-encoded`` (RFC 5987/8187, UTF-8 or ISO-8859-1),
  preferred over ``filename`` when both are present and it decodes to a name.

Not read: RFC 2231 continuations (``filename*0=``) and ``name*``. python_multipart's
``parse_options_header`` is not used for this: it re-encodes every value as latin-1
(raising on any character past U+00FF, which made the part look absent) and drops
``filename*``.
"""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

# RFC 8187 §3.2.1: recipients must read these two; any other charset is ignored.
_EXT_CHARSETS = frozenset({"utf-8", "iso8859-1"})
_HTML5_ESCAPE = re.compile(r"%(22|0[dD]|0[aA])")
_CLOSING_QUOTE = re.compile(rb'"[ \t]*(?:;|\Z)')
_SPACE = b" \t"


class Disposition(NamedTuple):
    name: str | None
    filename: str | None


def parse_disposition(value: bytes) -> Disposition:
    """The part's ``name`` and ``filename`` (None where absent or unreadable)."""
    params = _params(value)
    filename = _extended(params.get(b"filename*"))
    if not filename:
        filename = _plain(params.get(b"filename"))
    return Disposition(name=_plain(params.get(b"name")), filename=filename)


def _params(value: bytes) -> dict[bytes, bytes]:
    r"""``key=value`` parameters after the disposition type; keys lower-cased, first one wins.

    A quoted value runs to the first ``"`` that ends the parameter (followed by ``;`` or
    the end), so it may hold ``;`` and a backslash-escaped ``\"``. Parsing stops at an
    unterminated quote; a parameter without ``=`` is skipped.
    """
    params: dict[bytes, bytes] = {}
    at = value.find(b";")
    while at != -1:
        start = at + 1
        equals, semi = value.find(b"=", start), value.find(b";", start)
        if equals == -1 or (semi != -1 and semi < equals):
            at = semi
            continue
        key = value[start:equals].strip(_SPACE).lower()
        begin = equals + 1
        while begin < len(value) and value[begin] in _SPACE:
            begin += 1
        if value.startswith(b'"', begin):
            close = _CLOSING_QUOTE.search(value, begin + 1)
            if close is None:
                break
            raw = value[begin + 1 : close.start()].replace(b'\\"', b'"')
            at = value.find(b";", close.start())
        else:
            at = value.find(b";", begin)
            raw = value[begin : len(value) if at == -1 else at].strip(_SPACE)
        params.setdefault(key, raw)
    return params


def _plain(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return _HTML5_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), text)


def _extended(raw: bytes | None) -> str | None:
    """An RFC 5987 ext-value, or None when it is malformed or in a charset not read here."""
    if raw is None:
        return None
    parts = raw.strip(b'"').split(b"'", 2)  # some clients quote it, though RFC 5987 does not
    if len(parts) != 3:
        return None
    try:
        charset = codecs.lookup(parts[0].decode("ascii")).name
        if charset not in _EXT_CHARSETS:
            return None
        return unquote_to_bytes(parts[2]).decode(charset)
    except (LookupError, UnicodeDecodeError):
        return None
