"""``warmpool`` operator commands (producer/cli_ops.py): input checked before anything is sent, exit codes, --json."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from producer import cli, cli_ops
from tasks.errors import InvalidRequest

pytestmark = pytest.mark.timeout(30)


class FakeClient:
    """Records what the commands send; answers like the pool worker would."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def pause(self) -> dict[str, Any]:
        self.sent.append(("pause", None))
        return {"status": "paused", "paused": True, "since": "2026-12-01T12:00:00.000Z", "changed": True}

    def resume(self) -> dict[str, Any]:
        self.sent.append(("resume", None))
        return {"status": "resumed", "paused": False, "changed": True, "terminated": ["i-0123456789abcdef0"]}

    def force_release(self, project: str) -> dict[str, Any]:
        self.sent.append(("force_release", project))
        return {"status": "released", "project_id": project, "instance_id": "i-0123456789abcdef0", "forced": True}

    def recycle(self, **order: Any) -> dict[str, Any]:
        self.sent.append(("recycle", order))
        return {"status": "recycling", "idle_to_replace": ["i-1"], "assigned_after_release": []}

    def adopt(self, assignments: Any, *, dry_run: bool = False) -> dict[str, Any]:
        self.sent.append(("adopt", (assignments, dry_run)))
        if assignments is None:
            return {"status": "adopted", "adopted": [], "released_from_hold": []}
        adopted = [{"project_id": p, "instance_id": i, "was": "idle"} for p, i in assignments.items()]
        return {"status": "would_adopt" if dry_run else "adopted", "adopted": adopted, "unadopted": []}


def run(argv: list[str]) -> tuple[int, str, str, FakeClient]:
    fake = FakeClient()
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(cli_ops, "_client", lambda *_: fake),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue(), fake


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86_400), ("1h30m", 5400), ("45", 45)]
)
def test_durations(text: str, seconds: float) -> None:
    assert cli_ops.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2x", "h", "-5", "1h 30m", "", "nan", "inf", "2hh"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidRequest, match="--older-than"):
        cli_ops.parse_duration(text)


class TestAdoptFile:
    def test_csv_and_json(self, tmp_path: Path) -> None:
        csv_file = tmp_path / "a.csv"
        csv_file.write_text("project_id,instance_id\nold-1,i-0123456789abcdef0\n\nold-2, i-0123456789abcdef1\n")
        json_file = tmp_path / "a.json"
        json_file.write_text('{"old-1": "i-0123456789abcdef0", "old-2": "i-0123456789abcdef1"}')
        expected = {"old-1": "i-0123456789abcdef0", "old-2": "i-0123456789abcdef1"}
        assert cli_ops.read_assignments(str(csv_file)) == expected == cli_ops.read_assignments(str(json_file))

    @pytest.mark.parametrize(
        ("content", "says"),
        [
            ("project,instance\na,i-0123456789abcdef0\n", "header"),
            ("project_id,instance_id\na,i-0123456789abcdef0,extra\n", "line 2"),
            ("project_id,instance_id\na,i-0123456789abcdef0\na,i-0123456789abcdef1\n", "listed twice"),
            ("project_id,instance_id\na,not-an-instance\n", "not an instance id"),
            ("project_id,instance_id\nbad id,i-0123456789abcdef0\n", "not a project id"),
            ("project_id,instance_id\na,i-0123456789abcdef0\nb,i-0123456789abcdef0\n", "given to both"),
            ("project_id,instance_id\n", "non-empty"),
            ('{"a": ', "not valid JSON"),
            ('{"a": 5}', "JSON must be an object"),
        ],
    )
    def test_bad_files_are_one_line_exit_2_and_nothing_sent(self, tmp_path: Path, content: str, says: str) -> None:
        path = tmp_path / "bad"
        path.write_text(content)
        code, out, err, fake = run(["adopt", str(path)])
        assert code == 2 and says in err and err.count("\n") == 1 and out == ""
        assert fake.sent == []

    def test_a_missing_file(self) -> None:
        code, _, err, fake = run(["adopt", "/nonexistent/adopt.csv", "--json"])
        assert code == 2 and fake.sent == []


class TestCommands:
    def test_pause_resume_force_release(self) -> None:
        code, out, _, fake = run(["pause", "--json"])
        assert code == 0 and json.loads(out)["paused"] is True
        code, out, _, _ = run(["resume"])
        assert code == 0 and "terminating 1 machine" in out
        code, out, _, fake = run(["force-release", "p1", "--json"])
        assert code == 0 and json.loads(out)["forced"] and fake.sent == [("force_release", "p1")]

    def test_recycle(self) -> None:
        code, _, _, fake = run(["recycle", "--older-than", "2h"])
        assert code == 0 and fake.sent == [("recycle", {"older_than_s": 7200.0, "template_version": None})]
        code, _, _, fake = run(["recycle", "--not-template-version", "7", "--json"])
        assert code == 0 and fake.sent == [("recycle", {"older_than_s": None, "template_version": "7"})]
        for argv in (["recycle"], ["recycle", "--older-than", "2h", "--not-template-version", "7"]):
            code, _, err, fake = run(argv)
            assert code == 2 and fake.sent == [] and "recycle takes one of" in err

    def test_adopt(self, tmp_path: Path) -> None:
        path = tmp_path / "a.csv"
        path.write_text("project_id,instance_id\nold-1,i-0123456789abcdef0\n")
        code, out, _, fake = run(["adopt", str(path), "--dry-run", "--json"])
        assert code == 0 and json.loads(out)["status"] == "would_adopt"
        assert fake.sent == [("adopt", ({"old-1": "i-0123456789abcdef0"}, True))]
        code, out, _, fake = run(["adopt", "--none"])
        assert code == 0 and fake.sent == [("adopt", (None, False))] and "nothing to adopt" in out
        for argv in (["adopt"], ["adopt", str(path), "--none"], ["adopt", "--none", "--dry-run"]):
            code, _, _, fake = run(argv)
            assert code == 2 and fake.sent == []


def test_the_status_table_says_paused_unadopted_and_dry_run() -> None:
    from rich.console import Console

    from producer.render import status_renderable

    status: dict[str, Any] = {"asg_name": "a", "counts": {}, "group": {}, "machines": [], "waiting": [], "lost": []}
    console = Console(width=200, record=True)
    console.print(status_renderable(status))
    assert "PAUSED" not in console.export_text()
    status.update(
        paused=True,
        paused_since="2026-12-01T12:00:00.000Z",
        unadopted={"count": 2, "note": "not terminated until adopted"},
        dry_run=True,
        would_launch=1,
        would_terminate=["i-0123456789abcdef0"],
    )
    console.print(status_renderable(status))
    text = console.export_text()
    assert "PAUSED since 2026-12-01T12:00:00.000Z" in text and "unadopted: 2 machines" in text
    assert "DRY RUN: would launch 1, would terminate i-0123456789abcdef0" in text
