"""Random (version 4) UUIDs as text, cheaper than ``uuid.uuid4()``.

Publishing makes a few per event; building a ``uuid.UUID`` object for each and
formatting it cost more than the rest of the message. The text is the same as
``uuid.uuid4().hex`` / ``str(uuid.uuid4())``: 122 random bits from ``os.urandom``,
version 4, RFC 4122 variant.
"""

from __future__ import annotations

import os


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
