"""Redis Sentinel URLs: the two spellings wsupload accepts, taken apart once, and any Redis URL fit to print.

A Sentinel URL names the sentinels to ask and the master they watch, never the
master's address (that is what failing over changes). Two spellings, one meaning:

- wsupload's own, one URL (as the ``redis-sentinel-url`` convention writes it)::

      redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master_name[/db][?sentinel_password=…]

- kombu's, one ``sentinel://`` URL per sentinel joined by ``;``, the master in the query::

      sentinel://[[user]:password@]host[:port][/db];sentinel://host[:port]…?master_name=NAME[&sentinel_password=…]

Ports default to 26379, the database to 0. ``user``/``password`` are the master's
(``requirepass``, ACL); ``sentinel_password`` the sentinels' own, when they have one.
Percent-encode ``@ : / , ; ? & #`` inside a password. Both spellings parse to one
``SentinelUrl``, from which ``tasks.store.connections`` builds redis-py's client and
``worker.app`` kombu's broker URL and transport options. TLS to the master is not
offered through Sentinel (refused with a readable reason).

Pure: no I/O and no Redis import. A reason for refusing a URL never repeats a
password or the userinfo it sits in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

WSUPLOAD_SCHEME = "redis+sentinel"
KOMBU_SCHEME = "sentinel"
SENTINEL_SCHEMES = (WSUPLOAD_SCHEME, KOMBU_SCHEME)
DEFAULT_PORT = 26379
"""Sentinel's own port."""
SENTINEL_OPTIONS = ("sentinel_password", "sentinel_username")
"""Query options either spelling accepts; kombu's also requires ``master_name``."""
FORMS = (
    f"{WSUPLOAD_SCHEME}://[:password@]host[:port][,host[:port]…]/master_name[/db]"
    f" or {KOMBU_SCHEME}://host[:port][;{KOMBU_SCHEME}://host[:port]…][/db]?master_name=NAME"
)

_HOST = re.compile(r"^(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>[^:]*))?$")
_MASTER_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_PASSWORD_OPTION = re.compile(r"([?&][^=&?#]*password[^=&?#]*=)([^&#]*)", re.IGNORECASE)


@dataclass(frozen=True)
class SentinelUrl:
    """What a Sentinel URL says: whom to ask, for which master, and how to log in to it."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def master_kwargs(self) -> dict[str, Any]:
        """redis-py keyword arguments for the master's connections (``Sentinel.master_for``)."""
        kwargs: dict[str, Any] = {"db": self.db}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """redis-py keyword arguments for the connections to the sentinels themselves."""
        kwargs: dict[str, Any] = {}
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def kombu_url(self) -> str:
        """kombu's spelling, without the query: one ``sentinel://`` URL per sentinel.

        Credentials and database are repeated in every part: kombu switches its
        connection to the next part after a failed connect, and a part without a
        password would then log in without one.
        """
        user = quote(self.username or "", safe="")
        login = f"{user}:{quote(self.password, safe='')}@" if self.password is not None else ""
        if not login and user:
            login = f"{user}@"
        return ";".join(f"{KOMBU_SCHEME}://{login}{_netloc(host, port)}/{self.db}" for host, port in self.sentinels)

    def kombu_transport_options(self) -> dict[str, Any]:
        """What kombu's Sentinel transport needs beside the URL: the master's name, the sentinels' login."""
        options: dict[str, Any] = {"master_name": self.master}
        if self.sentinel_kwargs():
            options["sentinel_kwargs"] = self.sentinel_kwargs()
        return options


def is_sentinel_url(text: str) -> bool:
    return _scheme(text) in SENTINEL_SCHEMES


def parse_sentinel_url(text: str) -> SentinelUrl:
    """The ``SentinelUrl`` either spelling describes, or ``ValueError`` saying what is wrong (no secret in it)."""
    scheme = _scheme(text)
    for part in text.split(";"):
        after_scheme = part.split("://", 1)[-1]
        end_of_hosts = min((i for i in (after_scheme.find(c) for c in "/?#") if i >= 0), default=len(after_scheme))
        if "@" in after_scheme[end_of_hosts:]:
            # Most likely a password holding '/', '?' or '#' unencoded: quoting what follows would show it.
            raise ValueError("holds '@' after its hosts: percent-encode '/', '?', '#' and '@' in a password")
    if scheme == WSUPLOAD_SCHEME:
        return _parse_wsupload(text.strip())
    if scheme == KOMBU_SCHEME:
        return _parse_kombu(text.strip())
    raise ValueError(f"expected a Sentinel URL: {FORMS}")


def masked(text: str) -> str:
    """Any Redis URL (Sentinel ones included) fit to print: every password, and ``*password`` options, as ``***``.

    Errs towards hiding: a part's userinfo runs to its last ``@``, so an unencoded
    ``@`` in a password (or in an option) hides more, never less.
    """
    return ";".join(_masked_part(part) for part in text.strip().split(";"))


MIN_URL_SECRET = 4
"""Shorter passwords are not masked in logs: replacing every "ab" in every line would make the log unreadable."""


def url_secrets(text: str) -> list[str]:
    """The passwords a broker or Redis URL holds (each part's userinfo, ``*password`` options), as written and decoded.

    For ``redaction.protect``: what ``masked`` hides when a URL is printed, hidden too where a
    library's message quotes it some other way. Ones shorter than ``MIN_URL_SECRET`` are left out.
    """
    found: set[str] = set()
    for part in text.strip().split(";"):
        found.update(match.group(2) for match in _PASSWORD_OPTION.finditer(part))
        start = part.find("://") + 3 if "://" in part else 0
        at = part.rfind("@")
        if at >= start:
            _, has_password, password = part[start:at].partition(":")
            if has_password:
                found.add(password)
    decoded = {unquote(secret) for secret in found}
    return sorted(secret for secret in found | decoded if len(secret) >= MIN_URL_SECRET)


def _masked_part(part: str) -> str:
    part = _PASSWORD_OPTION.sub(r"\1***", part)  # first: a masked value holds no "@" left to mislead below
    start = part.find("://") + 3 if "://" in part else 0
    at = part.rfind("@")
    if at >= start:
        user, has_password, _ = part[start:at].partition(":")
        part = part[:start] + (f"{user}:***" if has_password else user) + part[at:]
    return part


def _scheme(text: str) -> str:
    scheme, sep, _ = text.strip().partition("://")
    return scheme.lower() if sep else ""


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_login(netloc: str) -> tuple[str | None, str | None, str]:
    """(username, password, hosts) of ``[user[:password]@]hosts``; percent-decoded."""
    if "@" not in netloc:
        return None, None, netloc
    userinfo, _, hosts = netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if has_password else None, hosts


def _sentinel(entry: str) -> tuple[str, int]:
    match = _HOST.match(entry.strip())
    if not match:
        # Not quoted: text that is not a host may be a password whose "@" was left out.
        raise ValueError("a sentinel is not host[:port] (a name, an IPv4 address or [an IPv6 one], then :port)")
    host = match.group("ip6") or match.group("name")
    port_text = match.group("port")
    if port_text is None or port_text == "":
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"sentinel {host}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError("the database must be a number (as in /0)")
    return int(text)


def _options(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            raise ValueError(f"unknown option {name!r} (accepted: {', '.join(allowed)})")
        if name in options and options[name] != value:
            raise ValueError(f"option {name!r} is given twice with different values")
        options[name] = value
    return options


def _checked(
    sentinels: list[tuple[str, int]],
    master: str,
    db: int,
    login: tuple[str | None, str | None],
    opts: dict[str, str],
    where_master: str,
) -> SentinelUrl:
    if not sentinels:
        raise ValueError("names no sentinel host")
    if not master:
        raise ValueError(f"names no master: give the name the sentinels monitor {where_master}")
    if not _MASTER_NAME.match(master):
        raise ValueError(f"the master name {master!r} may hold letters, digits and _ . : - only")
    return SentinelUrl(
        sentinels=tuple(dict.fromkeys(sentinels)),
        master=master,
        db=db,
        username=login[0],
        password=login[1],
        sentinel_username=opts.get("sentinel_username") or None,
        sentinel_password=opts.get("sentinel_password") or None,
    )


def _parse_wsupload(text: str) -> SentinelUrl:
    rest = text.split("://", 1)[1]
    if ";" in rest:
        raise ValueError(f"separates sentinels with ';': {WSUPLOAD_SCHEME}:// takes them comma-separated")
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, _, path = rest.partition("/")
    username, password, hosts = _split_login(netloc)
    sentinels = [_sentinel(entry) for entry in hosts.split(",") if entry.strip()]
    segments = [segment for segment in path.split("/") if segment]
    if len(segments) > 2:
        raise ValueError(f"has more path than /master_name/db: {FORMS}")
    master = unquote(segments[0]) if segments else ""
    db = _db(segments[1]) if len(segments) == 2 else 0
    options = _options(query, SENTINEL_OPTIONS)
    return _checked(sentinels, master, db, (username, password), options, "as the path (…/master_name/db)")


def _parse_kombu(text: str) -> SentinelUrl:
    sentinels: list[tuple[str, int]] = []
    logins: set[tuple[str | None, str | None]] = set()
    dbs: set[int] = set()
    query_parts = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        if _scheme(part) != KOMBU_SCHEME:
            raise ValueError(f"every ';'-separated part must be a {KOMBU_SCHEME}:// URL")
        parts = urlsplit(part.split("://", 1)[0].lower() + "://" + part.split("://", 1)[1])
        username, password, hosts = _split_login(parts.netloc)
        if "," in hosts:
            raise ValueError(f"lists hosts with ',': {KOMBU_SCHEME}:// takes one host per URL, joined by ';'")
        if hosts.strip():
            sentinels.append(_sentinel(hosts))
        if username is not None or password is not None:
            logins.add((username, password))
        path = parts.path.strip("/")
        if path:
            if "/" in path:
                raise ValueError(f"has more path than /db: {FORMS}")
            dbs.add(_db(path))
        if parts.query:
            query_parts.append(parts.query)
    if len(logins) > 1:
        raise ValueError("gives different logins in different parts (give the master's password once, or the same)")
    if len(dbs) > 1:
        raise ValueError("names different databases in different parts")
    options = _options("&".join(query_parts), ("master_name", *SENTINEL_OPTIONS))
    login = next(iter(logins), (None, None))
    master = options.pop("master_name", "")
    return _checked(sentinels, master, next(iter(dbs), 0), login, options, "as ?master_name=NAME")
