"""UUIDs as text: random ones (version 4) cheaper than ``uuid.uuid4()``, derived ones (version 5).

Publishing makes a few random ids per event; building a ``uuid.UUID`` object for each and
formatting it cost more than the rest of the message. The text is the same as
``uuid.uuid4().hex`` / ``str(uuid.uuid4())``: 122 random bits from ``os.urandom``,
version 4, RFC 4122 variant.

Derived ids (:func:`uuid5_hex`, the same as ``uuid.uuid5(namespace, name).hex``) hash with
CPython's own SHA-1 where it has one: ``hashlib.sha1`` is OpenSSL's, whose first call in a
process brings ~0.8 MiB of OpenSSL's code into it, and a worker's pool processes derive an
id for every job while a plain Celery pool process never hashes (issue 15, target 9).
"""

from __future__ import annotations

import os
import uuid

try:
    from _sha1 import sha1 as _sha1  # CPython's built-in SHA-1 (hashlib's fallback without OpenSSL)
except ImportError:  # pragma: no cover  (a build without it)
    from hashlib import sha1 as _sha1


def uuid4_hex() -> str:
    """Like ``uuid.uuid4().hex``."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def uuid4_str() -> str:
    """Like ``str(uuid.uuid4())``."""
    h = uuid4_hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid5_hex(namespace: uuid.UUID, name: str) -> str:
    """Like ``uuid.uuid5(namespace, name).hex``."""
    raw = bytearray(_sha1(namespace.bytes + name.encode("utf-8")).digest()[:16])
    raw[6] = raw[6] & 0x0F | 0x50  # version 5
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()
