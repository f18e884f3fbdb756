"""The webhook signature: ``X-Warmpool-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The HMAC (key: the webhook's secret) is over ``"<t>.<body>"``, the body being the exact
bytes POSTed. Receivers verify it (``verify``) and reject old timestamps (replays).

Pure standard library: a receiver may copy this module.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Warmpool-Signature"
EVENT_ID_HEADER = "X-Warmpool-Event-Id"
DEFAULT_TOLERANCE_S = 300


def signature(secret: str, body: bytes, *, timestamp: int) -> str:
    """The header value signing ``body`` at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, now: float, tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made within ``tolerance_s`` of ``now``."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp=timestamp)
    return hmac.compare_digest(expected, f"t={timestamp},v1={parts.get('v1', '')}")
