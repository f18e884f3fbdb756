"""Readiness checks (WARMPOOL_READY_URL): HTTP GETs run in parallel with a bounded timeout.

Runs on the aws workers, never on the pool worker. A machine is ready when
its URL answers 2xx within PROBE_TIMEOUT_S; anything else (refused, timeout,
non-2xx, redirect) is "not yet".
"""

from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROBE_TIMEOUT_S = 2.0
MAX_PARALLEL = 32


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is not a 2xx: not ready


_opener = urllib.request.build_opener(_NoRedirect)


def ready_url(template: str, instance_id: str, address: str) -> str:
    return template.format(address=address, instance_id=instance_id, private_ip=address, public_ip=address)


def check(url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``url`` answers 2xx within ``timeout_s``."""
    try:
        with _opener.open(urllib.request.Request(url, method="GET"), timeout=timeout_s) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def probe_all(template: str, candidates: list[tuple[str, str]], *, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Instance ids whose readiness URL answered 2xx (checked in parallel)."""
    if not candidates:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(candidates))) as pool:
        results = list(pool.map(lambda c: check(ready_url(template, *c), timeout_s=timeout_s), candidates))
    return [iid for (iid, _), ok in zip(candidates, results, strict=True) if ok]
