"""The kinds of value a setting may hold (tasks/config.py): each parses a string and says what it allows.

A parser raises ValueError when the text is not allowed; tasks.config turns that
into one line naming the setting, the bad value and ``allowed``. Pure standard library.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_REGION = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$")


@dataclass(frozen=True)
class Parser(Generic[T]):
    """``convert`` turns the stripped, non-empty text into the value or raises ValueError.

    ``allowed`` says what fits, for the error line and ``config check``.
    """

    allowed: str
    convert: Callable[[str], T]

    def __call__(self, raw: str) -> T:
        return self.convert(raw)


class ValueProblem(ValueError):
    """A ValueError whose text says what exactly is wrong (shown after what is allowed)."""


def _check(ok: bool) -> None:
    if not ok:
        raise ValueError


def integer(low: int, high: int) -> Parser[int]:
    """A whole number in ``low..high``."""

    def convert(raw: str) -> int:
        value = int(raw)  # ValueError on "abc", "1.5"
        _check(low <= value <= high)
        return value

    return Parser(f"an integer from {low} to {high}", convert)


def number(low: float, high: float) -> Parser[float]:
    """A finite number in ``low..high``."""

    def convert(raw: str) -> float:
        value = float(raw)
        _check(low <= value <= high)  # also refuses nan
        return value

    return Parser(f"a number from {low:g} to {high:g}", convert)


E = TypeVar("E", bound=Enum)


def one_of(kind: type[E]) -> Parser[E]:
    """A member of the string enum ``kind``, by value (case-insensitive)."""
    values = [str(member.value) for member in kind]

    def convert(raw: str) -> E:
        _check(raw.lower() in values)
        return kind(raw.lower())

    return Parser("one of " + ", ".join(repr(v) for v in values), convert)


def text(*, max_chars: int, forbidden: str, what: str) -> Parser[str]:
    """Printable text of at most ``max_chars`` characters, none of ``forbidden``."""

    def convert(raw: str) -> str:
        _check(len(raw) <= max_chars and raw.isprintable() and not any(c in raw for c in forbidden))
        return raw

    return Parser(what, convert)


def readable_file() -> Parser[str]:
    """The path of a file that exists and can be read."""

    def convert(raw: str) -> str:
        _check(raw.isprintable() and len(raw) <= 4096 and os.path.isfile(raw) and os.access(raw, os.R_OK))
        return raw

    return Parser("the path of a readable file", convert)


def url(*, schemes: tuple[str, ...] = (), example: str) -> Parser[str]:
    """A URL (``scheme://...``, no spaces), with one of ``schemes`` when given."""

    def convert(raw: str) -> str:
        _check(bool(_URL.match(raw)))
        _check(not schemes or raw.split("://", 1)[0].lower() in schemes)
        return raw

    kinds = "/".join(schemes) + " " if schemes else ""
    return Parser(f"a {kinds}URL such as {example}", convert)


def host() -> Parser[str]:
    """A host name or an IP address (IPv6 with or without brackets)."""

    def convert(raw: str) -> str:
        try:
            ipaddress.ip_address(raw.strip("[]"))
        except ValueError:
            _check(bool(_HOSTNAME.match(raw)))
        return raw

    return Parser("a host name or an IP address, e.g. 127.0.0.1 or 0.0.0.0", convert)


def region() -> Parser[str]:
    """An AWS region name."""

    def convert(raw: str) -> str:
        _check(bool(_REGION.match(raw)))
        return raw

    return Parser("an AWS region such as ap-south-1", convert)


def ready_url() -> Parser[str]:
    """An http(s) URL template with an ``{address}`` placeholder (and only known placeholders)."""

    def convert(raw: str) -> str:
        _check(raw.startswith(("http://", "https://")) and "{address}" in raw)
        try:
            raw.format(address="192.0.2.1", instance_id="i-0", private_ip="10.0.0.1", public_ip="192.0.2.1")
        except (KeyError, IndexError):
            raise ValueError from None
        return raw

    return Parser(
        "an http(s) URL template containing {address} (placeholders: address, instance_id, private_ip, "
        "public_ip), e.g. http://{address}:8080/healthz",
        convert,
    )


def mask_all(raw: str) -> str:
    """A secret shown as stars (its length is not shown either)."""
    return "****" if raw else ""


def mask_url_password(raw: str) -> str:
    """A URL with the password of its ``user:password@`` part replaced by stars (a malformed URL's too)."""
    scheme, sep, rest = raw.rpartition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return raw
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:****@{hostpart}"


def policy() -> Parser[str]:
    """A capacity policy spec (tasks.pool.policy.parse_policy), kept as its canonical text."""

    def convert(raw: str) -> str:
        from tasks.errors import InvalidRequest
        from tasks.pool.policy import parse_policy

        try:
            return parse_policy(raw).text()
        except InvalidRequest:
            raise ValueError from None

    return Parser("fixed, fixed:N, adaptive or adaptive:goal=G,floor=N", convert)


def schedules() -> Parser[str]:
    """A JSON list of schedule objects (tasks.pool.policy.parse_schedules), kept as given."""

    def convert(raw: str) -> str:
        from tasks.errors import InvalidRequest
        from tasks.pool.policy import parse_schedules

        try:
            parse_schedules(raw)
        except InvalidRequest as exc:
            raise ValueProblem(str(exc)) from None
        return raw

    return Parser(
        'a JSON list of {"name", "cron", "duration_s", "timezone", "min_idle"} objects (see docs/economics.md)',
        convert,
    )
