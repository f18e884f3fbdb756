"""Turn a run's raw numbers into the goal table, the JSON file and the plot."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stack import REPO, RESULTS_DIR
from bench.stats import format_table, ratio

Row = tuple[str, str, Any, Any, Any, str, str]
HEADERS = ("benchmark", "metric", "value", "baseline", "ratio", "goal", "met")


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


def _le(value: float, limit: float) -> bool | None:
    return None if math.isnan(value) or math.isnan(limit) else value <= limit


def _latency_rows(name: str, section: dict[str, Any], floor: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for kind in ("sync", "async"):
        got, base = section[kind], floor[kind]
        r50, r99 = ratio(got["p50_ms"], base["p50_ms"]), ratio(got["p99_ms"], base["p99_ms"])
        rows.append((name, f"{kind} p50 ms", got["p50_ms"], base["p50_ms"], r50, "<= 1.5x floor", _met(_le(r50, 1.5))))
        rows.append(
            (name, f"{kind} p90 ms", got["p90_ms"], base["p90_ms"], ratio(got["p90_ms"], base["p90_ms"]), "", "")
        )
        rows.append((name, f"{kind} p99 ms", got["p99_ms"], base["p99_ms"], r99, "<= 2x floor", _met(_le(r99, 2.0))))
    return rows


def _burst_rows(name: str, section: dict[str, Any]) -> list[Row]:
    floor = section["floor_drain"]["drain_per_s"]
    got = section["completed_per_s"]
    r = ratio(got, floor)
    ok = section["completed"] == section["n"] and section["distinct_machines"] and section["all_in_group"]
    return [
        (
            name,
            "completed/s (client)",
            got,
            floor,
            r,
            ">= 0.6x floor drain",
            _met(r >= 0.6 if not math.isnan(r) else None),
        ),
        (
            name,
            "pool worker drain/s",
            section["worker_drain"]["drain_per_s"],
            floor,
            ratio(section["worker_drain"]["drain_per_s"], floor),
            "",
            "",
        ),
        (
            name,
            "all served, distinct machines",
            f"{section['completed']}/{section['n']}",
            "",
            "",
            "all distinct",
            _met(ok),
        ),
    ]


def goal_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "floor" in results:
        f = results["floor"]
        rows.append(("1 floor", "sync p50 / p99 ms", f"{f['sync']['p50_ms']} / {f['sync']['p99_ms']}", "", "", "", ""))
        rows.append(
            ("1 floor", "async p50 / p99 ms", f"{f['async']['p50_ms']} / {f['async']['p99_ms']}", "", "", "", "")
        )
        rows.append(("1 floor", "solo drain/s (results stored)", f["drain"]["drain_per_s"], "", "", "", ""))
        rows.append(("1 floor", "no-op burst completed/s", f["burst"]["completed_per_s"], "", "", "", ""))
    stalls = results.get("async_client_first_call")
    if stalls and stalls.get("clients"):
        value = f"{stalls['first_call_stalled']}/{stalls['clients']}"
        rows.append(
            (
                "client",
                "fresh AsyncPoolClients whose 1st call stalled",
                value,
                "",
                "",
                "0",
                _met(stalls["first_call_stalled"] == 0),
            )
        )
    if "sequential" in results:
        s = results["sequential"]
        rows += _latency_rows("2 sequential", s, s["floor"])
        if "side_effects_queued" in s:
            q = s["side_effects_queued"]
            rows += _latency_rows("2 seq, aws paused", q, q["floor"])
    if "burst" in results:
        rows += _burst_rows("3 burst", results["burst"])
        if "side_effects_queued" in results["burst"]:
            rows += _burst_rows("3 burst, aws paused", results["burst"]["side_effects_queued"])
    if "slow_aws" in results:
        s = results["slow_aws"]
        rows += _latency_rows("4 slow AWS seq", s["sequential"], s["sequential"]["floor"])
        rows += _burst_rows("4 slow AWS burst", s["burst"])
    if "refresh" in results:
        rows += _refresh_rows(results["refresh"])
    if "orchestrator" in results:
        rows += _orchestrator_rows(results["orchestrator"], results.get("sequential"))
    return rows + _pools_rows(results)


def _pools_rows(results: dict[str, Any]) -> list[Row]:
    from bench.launches import launches_rows
    from bench.pools import pools_rows

    rows = pools_rows(results.get("pools", {})) + launches_rows(results.get("launches", {}))
    return [(*row[:6], _met(row[6])) for row in rows]


def _refresh_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    few = r["few_reservations"]
    goal = r["goal_calls"]
    calls = few["max_calls"]
    rows.append(
        (
            "5 refresh",
            f"AWS calls/refresh, N={r['n']} ({few['reservations']} reservations)",
            calls,
            "",
            "",
            f"<= {goal}",
            _met(calls <= goal),
        )
    )
    rows.append(("5 refresh", "calls by action", _fmt_calls(few["refreshes"][-1]["calls"]), "", "", "", ""))
    rows.append(("5 refresh", "refresh wall s (median)", round(few["wall_s"]["p50_ms"] / 1000, 2), "", "", "", ""))
    aws, pool = few.get("aws_side_s") or [math.nan], few.get("pool_apply_s") or [math.nan]
    rows.append(("5 refresh", "aws-side describe s / pool apply s", f"{_med(aws)} / {_med(pool)}", "", "", "", ""))
    many = r.get("many_reservations")
    if many:
        rows.append(
            (
                "5 refresh",
                f"AWS calls/refresh, N={many['instances']} (1 instance/reservation)",
                many["max_calls"],
                "",
                "",
                f"<= {many['goal_calls']}",
                _met(many["max_calls"] <= many["goal_calls"]),
            )
        )
    # Paced assigns are compared with no-op calls paced alike (older results: the back-to-back floor).
    floor99 = r.get("floor_paced", {}).get("p99_ms") or r["floor"]["sync"]["p99_ms"]
    quiet = r["assign_quiet"]
    rq = ratio(quiet["p99_ms"], floor99)
    rows.append(("5 refresh", "assign p99 ms, 40/s, no refresh running", quiet["p99_ms"], floor99, rq, "", ""))
    if "assign_during_refresh" not in r:
        return rows
    during = r["assign_during_refresh"]
    rd = ratio(during["p99_ms"], floor99)
    rows.append(
        (
            "5 refresh",
            f"assign p99 ms, 40/s, refreshes running ({during.get('refreshes_applied', '?')} applied)",
            during["p99_ms"],
            floor99,
            rd,
            "<= 2x floor p99",
            _met(_le(rd, 2.0)),
        )
    )
    if "assign_during_apply" in r.get("pool_side_only", {}):
        side = r["pool_side_only"]
        got = side["assign_during_apply"]
        base = side.get("floor_paced", {}).get("p99_ms") or side["floor"]["sync"]["p99_ms"]
        rp = ratio(got["p99_ms"], base)
        label = f"assign p99 ms, aws paused, snapshots applied ({got.get('refreshes_applied', '?')})"
        rows.append(("5 refresh", label, got["p99_ms"], base, rp, "<= 2x floor p99", _met(_le(rp, 2.0))))
    return rows


def _orchestrator_rows(o: dict[str, Any], seq: dict[str, Any] | None) -> list[Row]:
    rows: list[Row] = []
    if "original_latency" in o:
        orig = o["original_latency"]["p50_ms"]
        ours = seq["sync"]["p50_ms"] if seq else math.nan
        rows.append(
            (
                "6 vs original",
                "assign p50 ms with idle machines (ours / original)",
                ours,
                orig,
                ratio(ours, orig),
                "",
                "",
            )
        )
    if "original_sustained" in o:
        orig = o["original_sustained"]["served_per_s"]
        ours = o["warmpool_sustained"]["served_per_s"]
        rows.append(
            (
                "6 vs original",
                f"sustained assigns/s, idle target 2 (ours / original, {o['warmpool_sustained']['clients']} clients)",
                ours,
                orig,
                ratio(ours, orig),
                "",
                "",
            )
        )
    return rows


def _med(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 2) if ordered else math.nan


def _fmt_calls(calls: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))


def table(results: dict[str, Any]) -> str:
    return format_table(goal_rows(results), HEADERS)


# -- files -------------------------------------------------------------------------------
def meta() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=5).stdout.strip()
        except OSError:
            return ""

    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "tasks", "producer", "celeryconfig.py")),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def write_json(name: str, results: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    (RESULTS_DIR / f"{name}-latest.json").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _cdf(ax: Any, values: list[float], label: str, **style: Any) -> None:
    data = sorted(values)
    if not data:
        return
    ys = [(i + 1) / len(data) for i in range(len(data))]
    ax.plot(data, ys, label=f"{label} (p50 {data[len(data) // 2]:.2f}, n={len(data)})", **style)


def latency_series(results: dict[str, Any]) -> list[tuple[str, list[float], dict[str, Any]]]:
    series: list[tuple[str, list[float], dict[str, Any]]] = []
    if "floor" in results:
        series.append(("floor no-op, sync client", results["floor"]["sync_raw_ms"], {"color": "black", "lw": 2}))
        series.append(("floor no-op, async client", results["floor"]["async_raw_ms"], {"color": "grey", "lw": 2}))
    if "sequential" in results:
        series.append(("assign, sync client", results["sequential"]["sync_raw_ms"], {"color": "tab:blue"}))
        series.append(("assign, async client", results["sequential"]["async_raw_ms"], {"color": "tab:cyan"}))
        if "side_effects_queued" in results["sequential"]:
            q = results["sequential"]["side_effects_queued"]
            series.append(("assign, sync, aws worker paused", q["sync_raw_ms"], {"color": "tab:brown", "lw": 1.5}))
    if "slow_aws" in results:
        s = results["slow_aws"]["sequential"]
        series.append(("assign, AWS +100 ms, sync", s["sync_raw_ms"], {"color": "tab:orange", "ls": "--"}))
        series.append(("assign, AWS +100 ms, async", s["async_raw_ms"], {"color": "tab:red", "ls": "--"}))
    if "refresh" in results:
        r = results["refresh"]
        series.append(
            (f"assign, N={r['n']}, no refresh", r["assign_quiet"]["raw_ms"], {"color": "tab:green", "ls": ":"})
        )
        if "assign_during_refresh" in r:
            during = r["assign_during_refresh"]["raw_ms"]
            style = {"color": "tab:olive", "ls": ":"}
            series.append((f"assign, N={r['n']}, refreshes running", during, style))
    if "orchestrator" in results and "original_latency" in results["orchestrator"]:
        series.append(
            (
                "original orchestrator (idle machines)",
                results["orchestrator"]["original_latency"]["raw_ms"],
                {"color": "tab:purple", "ls": "-."},
            )
        )
    return series


def throughput_bars(results: dict[str, Any]) -> list[tuple[str, float]]:
    bars: list[tuple[str, float]] = []
    if "floor" in results:
        bars.append(("floor: solo drain", results["floor"]["drain"]["drain_per_s"]))
        bars.append(("floor: no-op burst", results["floor"]["burst"]["completed_per_s"]))
    if "burst" in results:
        bars.append(("assign burst", results["burst"]["completed_per_s"]))
        if "side_effects_queued" in results["burst"]:
            bars.append(("assign burst, aws paused", results["burst"]["side_effects_queued"]["completed_per_s"]))
    if "slow_aws" in results:
        bars.append(("assign burst, AWS +100 ms", results["slow_aws"]["burst"]["completed_per_s"]))
    return bars


def sustained_bars(results: dict[str, Any]) -> list[tuple[str, float]]:
    o = results.get("orchestrator", {})
    if "warmpool_sustained" not in o:
        return []
    return [
        ("warmpool", o["warmpool_sustained"]["served_per_s"]),
        ("original", o["original_sustained"]["served_per_s"]),
    ]


def _bars(ax: Any, bars: list[tuple[str, float]], colors: list[str], title: str) -> None:
    names, values = zip(*bars, strict=True)
    ax.barh(list(names), list(values), color=colors[: len(bars)])
    ax.set_xlabel("per second")
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    ax.invert_yaxis()


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Latency CDFs against the floor (left) and throughputs (right), as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return None
    bars, sustained = throughput_bars(results), sustained_bars(results)
    panels = 1 + bool(bars) + bool(sustained)
    widths = [1.8, 1.0, 0.8][:panels]
    fig, axes = plt.subplots(1, panels, figsize=(6 + 4 * panels, 6), gridspec_kw={"width_ratios": widths})
    axes = list(axes) if panels > 1 else [axes]
    left = axes[0]
    for label, values, style in latency_series(results):
        _cdf(left, values, label, **style)
    if "sequential" in results:
        floor = results["sequential"]["floor"]["sync"]
        left.axvline(1.5 * floor["p50_ms"], color="black", ls=":", lw=1)
        left.axvline(2.0 * floor["p99_ms"], color="black", ls="--", lw=1)
        left.text(1.5 * floor["p50_ms"], 0.02, " goal p50\n (1.5x floor)", fontsize=7)
        left.text(2.0 * floor["p99_ms"], 0.12, " goal p99\n (2x floor)", fontsize=7)
    left.set_xscale("log")
    left.set_xlabel("round trip, ms (log scale)")
    left.set_ylabel("fraction of calls at or below")
    left.set_title("assign latency vs the no-op Celery floor (CDF)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    if bars:
        colors = ["black", "grey", "tab:blue", "tab:brown", "tab:orange"]
        if not any(name == "assign burst, aws paused" for name, _ in bars):
            colors.remove("tab:brown")
        _bars(axes[1], bars, colors, "burst throughput vs the floor")
    if sustained:
        _bars(axes[-1], sustained, ["tab:green", "tab:purple"], "sustained, idle target 2 (assigns/s)")
    fig.suptitle(f"warmpool benchmarks — {results.get('meta', {}).get('started_at', '')} (2 CPUs, shared machine)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.report RESULTS.json [PLOT.png]``: print the table again and redraw the plot."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    results = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    print(table(results))
    if len(args) > 1:
        plot(results, Path(args[1]))


if __name__ == "__main__":
    main()
