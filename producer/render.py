"""Human-readable rendering of a pool status snapshot (rich tables)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from producer.render_economics import economics_text

_STATE_STYLE = {
    "idle": "green",
    "assigned": "cyan",
    "pending": "yellow",
    "releasing": "magenta",
    "quarantined": "bold red",
    "foreign": "blue",
}


def _summary(status: Mapping[str, Any]) -> Text:
    group = status.get("group", {})
    counts = status.get("counts", {})
    text = Text()
    text.append(f"{status.get('asg_name')}", style="bold")
    text.append(
        f"  desired {group.get('desired_capacity')} (min {group.get('min_size')}, max {group.get('max_size')})"
        f"  wanted {group.get('wanted')}  idle target {status.get('idle_target')}\n"
    )
    shown = [s for s in _STATE_STYLE if counts.get(s) or s not in ("quarantined", "foreign")]
    text.append("  ".join(f"{state} {counts.get(state, 0)}" for state in shown))
    age = status.get("refresh_age_s")
    text.append(f"   refreshed {'never' if age is None else f'{age:.1f}s ago'}")
    if group.get("capped"):
        text.append(f"\nCAPPED: MaxSize {group.get('max_size')} keeps the pool below what is wanted", style="bold red")
    if status.get("refresh_error"):
        text.append(f"\nrefresh failing: {status['refresh_error']}", style="bold red")
    if status.get("waiting"):
        text.append(f"\nwaiting callers: {len(status['waiting'])}", style="yellow")
    if status.get("scale_up_paused_until"):
        text.append(
            f"\nscale-up paused until {status['scale_up_paused_until']}: {status.get('scale_up_paused_reason')}",
            style="bold red",
        )
    if status.get("unready_total"):
        text.append(f"\nmachines replaced for never becoming ready: {status['unready_total']}", style="red")
    if status.get("lost_total"):
        text.append(f"\nlost machines: {status['lost_total']}", style="red")
    recovery = status.get("recovery") or {}
    if counts.get("quarantined"):
        text.append(
            f"\nQUARANTINED: {counts['quarantined']} machines that may be in use: the pool state was lost at "
            f"{recovery.get('state_lost_at')}; each is held until its tag lands or an operator runs "
            "'warmpool release-quarantined'",
            style="bold red",
        )
    if counts.get("foreign"):
        text.append(f"\nforeign: {counts['foreign']} machines protected from scale-in by someone else", style="blue")
    if recovery and recovery.get("epoch") and not recovery.get("epoch_confirmed"):
        text.append("\nfirst start: waiting for AWS to show the group's warmpool:epoch tag", style="yellow")
    _operator_lines(status, text)
    return text


def _operator_lines(status: Mapping[str, Any], text: Text) -> None:
    """Paused, machines held for adoption, dry-run plans (tasks.pool.operations.operator_status)."""
    if status.get("paused"):
        text.append(f"\nPAUSED since {status.get('paused_since')}: no AWS change until resume", style="bold yellow")
    unadopted = status.get("unadopted") or {}
    if unadopted.get("count"):
        text.append(f"\nunadopted: {unadopted['count']} machines {unadopted.get('note')}", style="yellow")
    if status.get("dry_run"):
        would = ", ".join(status.get("would_terminate") or []) or "none"
        text.append(
            f"\nDRY RUN: would launch {status.get('would_launch', 0)}, would terminate {would}", style="bold magenta"
        )


def _machines(status: Mapping[str, Any]) -> Table:
    table = Table(title="machines", title_justify="left", expand=False)
    for column in ("instance", "state", "project", "ip", "private ip", "since", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for m in status.get("machines", []):
        state = str(m.get("state"))
        detail = m.get("detail") or ""
        if state == "assigned" and not (m.get("tagged") and m.get("protected")):
            detail = (detail + " tagging...").strip()
        if m.get("health") and m.get("health") != "Healthy":
            detail = (detail + f" health {m['health']}: AWS will replace it").strip()
        table.add_row(
            str(m.get("instance_id")),
            Text(state, style=_STATE_STYLE.get(state, "")),
            m.get("project_id") or "",
            m.get("ip") or "",
            m.get("private_ip") or "",
            str(m.get("since") or "")[11:19],
            detail,
        )
    return table


def _lost(status: Mapping[str, Any]) -> Table | None:
    if not status.get("lost"):
        return None
    table = Table(title="recently lost (assigned machines that vanished)", title_justify="left")
    for column in ("instance", "project", "lost at", "reason"):
        table.add_column(column)
    for x in status["lost"]:
        table.add_row(x["instance_id"], x["project_id"], str(x["lost_at"]), x["reason"])
    return table


def status_renderable(status: Mapping[str, Any]) -> Group:
    """The status snapshot as a summary line, a machines table and a lost-machines table."""
    parts: list[Any] = [_summary(status)]
    if (economics := economics_text(status)) is not None:
        parts.append(economics)
    parts.append(_machines(status))
    lost = _lost(status)
    if lost is not None:
        parts.append(lost)
    return Group(*parts)


def _yes(flag: Any) -> str:
    return "[green]yes[/]" if flag else "[dim]-[/]"


def status_title(status: Mapping[str, Any]) -> str:
    """One line: counts by state, group bounds, refresh age, lost machines (rich markup)."""
    counts, group = status["counts"], status["group"]
    parts = [f"{name} {counts.get(name, 0)}" for name in ("idle", "assigned", "pending", "releasing")]
    parts += [f"[red]{name} {counts[name]}[/]" for name in ("quarantined", "foreign") if counts.get(name)]
    bounds = f"desired {group['desired_capacity']} (min {group['min_size']}, max {group['max_size']})"
    if group.get("capped"):
        bounds += " [red]capped[/]"
    age = status.get("refresh_age_s")
    refreshed = f"refreshed {age:.1f}s ago" if age is not None else "not refreshed yet"
    lost = f" · [red]lost {status['lost_total']}[/]" if status.get("lost_total") else ""
    policy = (status.get("economics") or {}).get("policy") or {}
    target = f" · target {policy['target']} ({escape(str(policy.get('reason', '')))})" if "target" in policy else ""
    return f"{status['asg_name']}: {' · '.join(parts)} · {bounds} · {refreshed}{target}{lost}"


def compact_status_table(status: Mapping[str, Any]) -> Table:
    """The pool snapshot of ``PoolClient.status()`` as a rich table (fits 80 columns)."""
    table = Table(
        title=status_title(status), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0)
    )
    address = f"{status.get('address', 'public')} ip"
    for column in ("instance", "state", "project", address, "since", "tag", "prot"):
        table.add_column(column, no_wrap=True)
    for m in status["machines"]:
        style = _STATE_STYLE.get(m["state"], "")
        table.add_row(
            m["instance_id"],
            f"[{style}]{m['state']}[/]" if style else m["state"],
            m.get("project_id") or "",
            m.get("ip") or "[dim]none[/]",
            str(m.get("since", ""))[11:19],
            _yes(m.get("tagged")),
            _yes(m.get("protected")),
        )
    return table
