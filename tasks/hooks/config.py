"""Webhook configuration: ``Webhook(url, secret)``, validated once (docs/operations.md "Webhooks").

Two sources, one validation: a list ``webhooks = [{ url = "...", secret = "..." }]`` (the TOML
file's top level or ``[pools.NAME]``: ``parse_webhooks``), and WARMPOOL_WEBHOOK_URL +
WARMPOOL_WEBHOOK_SECRET for one (``webhooks_from_settings``). A bad entry is a ConfigError whose
one line names the field; nothing is half-applied (the whole list is checked first).

Pure standard library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tasks.errors import ConfigError

MAX_URL_CHARS = 2048
MAX_SECRET_CHARS = 4096
MAX_WEBHOOKS = 20  # per pool: each one is a consumer group and a delivery thread


@dataclass(frozen=True)
class Webhook:
    """One configured receiver: where events are POSTed and the secret that signs them."""

    url: str
    secret: str

    def __repr__(self) -> str:  # the secret never reaches a log line or a traceback
        return f"Webhook(url={self.url!r}, secret='****')"

    @property
    def group(self) -> str:
        """The name of this webhook's consumer group on a pool's event stream (stable per URL)."""
        return "webhook:" + hashlib.sha256(self.url.encode()).hexdigest()[:16]


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str) or not url:
        return "must be a non-empty string"
    if len(url) > MAX_URL_CHARS or not url.isprintable() or any(c.isspace() for c in url):
        return f"must be at most {MAX_URL_CHARS} printable characters without spaces"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, such as https://hooks.example.com/warmpool"
    if parts.username or parts.password:
        return "must not carry credentials (the signature authenticates warmpool)"
    return None


def _secret_problem(secret: Any) -> str | None:
    if not isinstance(secret, str) or not secret:
        return "must be a non-empty string"
    if len(secret) > MAX_SECRET_CHARS or not secret.isprintable() or any(c.isspace() for c in secret):
        return f"must be at most {MAX_SECRET_CHARS} printable characters without spaces"
    return None


def webhook(url: Any, secret: Any, *, where: str = "webhook") -> Webhook:
    """One validated Webhook; ConfigError naming ``where``.url or ``where``.secret."""
    if (problem := _url_problem(url)) is not None:
        shown = repr(url)[:80] if isinstance(url, str) else type(url).__name__
        raise ConfigError(f"{where}.url={shown} {problem}")
    if (problem := _secret_problem(secret)) is not None:
        raise ConfigError(f"{where}.secret {problem}")
    return Webhook(url=url, secret=secret)


def parse_webhooks(items: Any, *, where: str = "webhooks") -> tuple[Webhook, ...]:
    """A validated list of ``{url, secret}`` tables (the TOML ``webhooks`` key) as Webhooks.

    Every entry is checked before any is returned: one bad entry refuses the whole list
    (ConfigError, one line naming ``where[i].field``). Unknown keys and repeated URLs are errors.
    """
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ConfigError(f"{where} must be a list of {{ url, secret }} tables")
    if len(items) > MAX_WEBHOOKS:
        raise ConfigError(f"{where} has {len(items)} webhooks; at most {MAX_WEBHOOKS}")
    found: list[Webhook] = []
    for n, item in enumerate(items):
        here = f"{where}[{n}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{here} must be a table {{ url = ..., secret = ... }}")
        unknown = sorted(set(item) - {"url", "secret"})
        if unknown:
            raise ConfigError(f"{here} has unknown key(s) {', '.join(map(str, unknown))}: expected url and secret")
        hook = webhook(item.get("url"), item.get("secret"), where=here)
        if any(h.url == hook.url for h in found):
            raise ConfigError(f"{here}.url={hook.url!r} is configured twice")
        found.append(hook)
    return tuple(found)


def webhooks_from_settings(settings: Any) -> tuple[Webhook, ...]:
    """The webhook of WARMPOOL_WEBHOOK_URL + WARMPOOL_WEBHOOK_SECRET (both or neither), as a tuple."""
    url, secret = getattr(settings, "webhook_url", ""), getattr(settings, "webhook_secret", "")
    if not url and not secret:
        return ()
    if not url:
        raise ConfigError("WARMPOOL_WEBHOOK_SECRET is set but WARMPOOL_WEBHOOK_URL is not: set both or neither")
    if not secret:
        raise ConfigError("WARMPOOL_WEBHOOK_URL is set but WARMPOOL_WEBHOOK_SECRET is not: set both or neither")
    return (webhook(url, secret, where="WARMPOOL_WEBHOOK"),)
