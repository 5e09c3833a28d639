"""Mask the credentials in a URI before it is shown: errors, logs, the CLI, ``repr()``.

:func:`redact_uri` is the one place that decides what of a Redis, MongoDB or AMQP
URI may be printed. It keeps what helps an operator (scheme, user name, hosts,
ports, path, harmless query options) and replaces with :data:`MASK`:

- the password of the userinfo (``user:***@``), or the whole userinfo when it has
  no ``:`` (a bare token, ``***@``);
- the value of every query option whose name looks like a secret (:data:`SECRET_OPTION`:
  ``password=``, ``tlsCertificateKeyFilePassword=``, ``authMechanismProperties=``, ...);
- a ``#fragment``.

A URI it cannot read with certainty (no scheme, an ``@`` outside the userinfo, a
host or port that is not one, an unescaped ``/`` in a password) shows as
``scheme://***``: a malformed URI is never echoed, as it may hold a password in
any position.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

SECRET_OPTION = re.compile(r"pass|pwd|secret|token|key|credential|signature|authmechanismproperties", re.IGNORECASE)
"""Query options whose value is masked (searched in the option's name, unescaped)."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_NEXT_URI = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")
"""``;`` joining several URIs (kombu's ``sentinel://h1;sentinel://h2``)."""
_HOST = r"(?:\[[0-9A-Za-z:.%]+\]|[A-Za-z0-9._~%!$&'()*+=-]*)(?::[0-9]*)?"
_HOSTS = re.compile(rf"{_HOST}(?:,{_HOST})*")
"""One host[:port], or MongoDB's comma-separated list of them."""


def redact_uri(uri: str) -> str:
    """``uri`` with its password and secret-looking query values masked (see the module)."""
    return ";".join(_redact_one(piece) for piece in _NEXT_URI.split(uri))


def _redact_one(uri: str) -> str:
    match = _SCHEME.match(uri)
    if match is None:
        return MASK
    scheme = match.group(1)
    rest = uri[match.end() :]
    authority_end = len(rest)
    for stop in "/?#":
        position = rest.find(stop)
        if position != -1:
            authority_end = min(authority_end, position)
    authority, tail = rest[:authority_end], rest[authority_end:]
    if "@" in tail:  # an unescaped "/", "?" or "#" in a password: no telling where it ends
        return f"{scheme}://{MASK}"
    userinfo, at, hosts = authority.rpartition("@")
    if not _HOSTS.fullmatch(hosts):
        return f"{scheme}://{MASK}"
    if at:
        user, colon, _password = userinfo.partition(":")
        userinfo = f"{user}:{MASK}" if colon else MASK
    tail, _, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    shown = f"{scheme}://{userinfo}{at}{hosts}{path}"
    if question:
        shown += "?" + _redact_query(query)
    if fragment:
        shown += "#" + MASK
    return shown


def _redact_query(query: str) -> str:
    # MongoDB also separates options with ";" (a ";" before another scheme was split off above).
    pieces = re.split(r"([&;])", query)
    for index in range(0, len(pieces), 2):
        name, equals, _value = pieces[index].partition("=")
        if equals and SECRET_OPTION.search(unquote(name)):
            pieces[index] = f"{name}={MASK}"
    return "".join(pieces)
