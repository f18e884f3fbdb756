"""Scenario 8: hostile input, against a running stack.

Project ids of every shape go through the Python clients, the CLI and the HTTP
gateway: each is refused with a clear error before anything is enqueued, and
the pool does not change. Poisoned messages put on the queues by hand (wrong
argument types, unknown task names, undecodable bodies, pickle) are rejected,
pickle is never unpickled, and the workers keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kombu import Connection

from producer import cli
from producer.aio import AsyncPoolClient
from producer.client import PoolClient
from tasks.contract import (
    PROJECT_ID_PATTERN,
    TASK_APPLY_SNAPSHOT,
    TASK_ASSIGN,
    TASK_AWS_SET_DESIRED,
    TASK_AWS_TAG_ASSIGNMENTS,
    TASK_AWS_TERMINATE,
    TASK_RELEASE,
)
from tasks.errors import InvalidProject
from tests.faults.conftest import FaultStack, Infra, running_stack, wait_for
from tests.faults.invariants import assert_invariants
from tests.faults.messages import EMBED, headers_for
from tests.hostile import HOSTILE_IDS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# The shared list, and what only reaches the worker this way (no URL could carry it).
NASTY_IDS = [
    *HOSTILE_IDS,
    "a" * 10_240,
    ".",
    "-rf",
    "--json",
    " proj-42",
    "proj-42\t",
    "\ud800",
]

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hostile_ids() -> st.SearchStrategy[str]:
    valid = st.from_regex(PROJECT_ID_PATTERN, fullmatch=True)
    return st.one_of(
        st.sampled_from(NASTY_IDS),
        st.text(max_size=300),
        st.text(alphabet=st.characters(codec="ascii"), max_size=200),
        st.text(min_size=129, max_size=2000, alphabet="abc"),
        st.builds(lambda a, b: a + b, valid, st.sampled_from("/\\ ;$`'\"\x00\n%\u202e")),
        st.builds(lambda a, b: a + b, st.sampled_from(".-_"), valid),
    ).filter(lambda s: PROJECT_ID_PATTERN.fullmatch(s) is None)


def not_strings() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.integers(),
        st.floats(allow_nan=True),
        st.booleans(),
        st.binary(max_size=50),
        st.lists(st.text(max_size=5), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    logs = tmp_path_factory.mktemp("hostile")
    with running_stack(infra, logs, idle_target=3, refresh_s=1.0) as stack:
        holder = stack.client.assign("holder", wait=10).instance_id
        assert_invariants(stack, holders={"holder": holder}, settle=True)
        yield stack


def pool_picture(stack: FaultStack) -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
    """What must not change: who holds what, and each machine's state and holder."""
    view = stack.store.view()
    return dict(view.projects), {i: (m.state.value, m.project_id) for i, m in view.machines.items()}


@contextlib.contextmanager
def unchanged(stack: FaultStack) -> Iterator[None]:
    before = pool_picture(stack)
    yield
    assert pool_picture(stack) == before


class Recorder:
    """Stands in for Celery's send_task: anything reaching it would have been enqueued."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.sent.append((args, kwargs))
        raise AssertionError(f"a hostile id reached the broker: {args!r:.200}")


# -- the clients ----------------------------------------------------------------------
def test_clients_refuse_hostile_ids_before_enqueueing(stack: FaultStack) -> None:
    recorder = Recorder()
    sync = PoolClient(app=stack.app)
    aio = AsyncPoolClient(app=stack.app)

    @SETTINGS
    @given(project_id=st.one_of(hostile_ids(), not_strings()))
    @example(project_id="a" * 10_240)
    @example(project_id="../etc/passwd")
    @example(project_id=None)
    def check(project_id: Any) -> None:
        with mock.patch.object(stack.app, "send_task", recorder):
            for call in (sync.assign, sync.release, sync.assign_result, sync.release_result):
                with pytest.raises(InvalidProject) as err:
                    call(project_id)
                assert "project id" in str(err.value)
            for acall in (aio.assign, aio.release, aio.assign_result, aio.release_result):
                with pytest.raises(InvalidProject):
                    asyncio.run(acall(project_id))

    with unchanged(stack):
        check()
    asyncio.run(aio.aclose())
    assert recorder.sent == []


def run_cli(argv: list[str], client: PoolClient) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(cli, "_client", lambda _args=None: client),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_refuses_hostile_ids_with_exit_2_and_a_json_error(stack: FaultStack) -> None:
    recorder = Recorder()
    client = PoolClient(app=stack.app)

    @SETTINGS
    @given(project_id=hostile_ids())
    @example(project_id="--json")
    @example(project_id="a\x00b")
    def check(project_id: str) -> None:
        with mock.patch.object(stack.app, "send_task", recorder):
            for command in ("assign", "release"):
                # `--` so that ids starting with "-" reach warmpool instead of argparse
                code, out, err = run_cli([command, "--json", "--", project_id], client)
                assert code == 2, (project_id, out, err)
                body = json.loads(out)
                assert body["status"] == "failed" and body["code"] == "invalid_project", body
                assert body["message"] and "Traceback" not in out + err
                code, out, err = run_cli([command, "--", project_id], client)
                assert code == 2 and err.startswith("warmpool: ") and "Traceback" not in err

    with unchanged(stack):
        check()
        # the documented spelling, for an id argparse passes through as it is
        code, out, _ = run_cli(["assign", "../etc/passwd", "--json"], client)
        assert code == 2 and json.loads(out)["code"] == "invalid_project"
    assert recorder.sent == []


# -- the HTTP gateway ------------------------------------------------------------------
class RecordingPool:
    """A GatewayClient in front of the real AsyncPoolClient, recording what reaches it."""

    def __init__(self, inner: AsyncPoolClient) -> None:
        self.inner = inner
        self.calls: list[tuple[str, Any]] = []

    async def assign_result(self, project_id: str, *, wait: float) -> dict[str, Any]:
        self.calls.append(("assign", project_id))
        return await self.inner.assign_result(project_id, wait=wait)

    async def release_result(self, project_id: str) -> dict[str, Any]:
        self.calls.append(("release", project_id))
        return await self.inner.release_result(project_id)

    async def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        return await self.inner.status()

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_gateway_refuses_hostile_ids_and_never_reaches_the_pool(stack: FaultStack) -> None:
    gateway = pytest.importorskip("producer.gateway")
    pool = RecordingPool(AsyncPoolClient(app=stack.app, reply_timeout_s=5))
    app = gateway.create_app(pool)

    async def request(method: str, url: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            return await client.request(method, url)

    @SETTINGS
    @given(project_id=hostile_ids())
    @example(project_id="a" * 10_240)
    @example(project_id="..%2F..%2Fetc%2Fpasswd")
    @example(project_id="a\r\nX-Injected: 1")
    def check(project_id: str) -> None:
        encoded = quote(project_id, safe="", errors="surrogatepass")
        for method, url in [
            ("GET", f"/{encoded}"),
            ("POST", f"/v1/projects/{encoded}/machine"),
            ("DELETE", f"/v1/projects/{encoded}/machine"),
        ]:
            response = asyncio.run(request(method, url))
            assert response.status_code in (200, 400, 404, 405), (url, response.status_code, response.text[:300])
            body = response.json()
            if response.status_code == 200:  # only "/" (an empty or dot-only id) answers 200: the index
                assert body.get("service") == "warmpool", body
            else:
                assert body.get("code") in ("invalid_project", "not_found", "method_not_allowed"), body
            assert "Traceback" not in response.text

    with unchanged(stack):
        check()
    asyncio.run(pool.aclose())
    assert [c for c in pool.calls if c[0] != "status"] == []


# -- poisoned messages --------------------------------------------------------------------
def celery_message(task: str, args: Any, kwargs: Any = None) -> tuple[dict[str, Any], Any]:
    """Headers and body of a Celery protocol 2 message."""
    headers = headers_for(task, argsrepr=repr(args)[:100], kwargsrepr=repr(kwargs)[:100])
    return headers, [args, kwargs or {}, dict(EMBED)]


class Unpickled:
    """Unpickling this creates a directory: proof that a pickle payload was deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.makedirs, (str(self.marker),))


def poisoned_messages(marker: Path) -> list[tuple[str, str, bytes, dict[str, Any] | None]]:
    """(queue, content type, raw body, headers) of every poisoned message."""
    out: list[tuple[str, str, bytes, dict[str, Any] | None]] = []

    def json_msg(queue: str, task: str, args: Any, kwargs: Any = None) -> None:
        headers, body = celery_message(task, args, kwargs)
        out.append((queue, "application/json", json.dumps(body).encode(), headers))

    # wrong argument types and arity
    for bad in ([123], [None], [["list"]], [{"d": 1}], [], ["a", "b", "c"], [1.5e308], [True]):
        json_msg("pool", TASK_ASSIGN, bad)
        json_msg("pool", TASK_RELEASE, bad)
    json_msg("pool", TASK_ASSIGN, "not-a-list")
    json_msg("pool", TASK_ASSIGN, [], {"project_id": "kw-only", "extra": 1})
    json_msg("pool", TASK_APPLY_SNAPSHOT, [{"instances": "nope"}])
    json_msg("pool", TASK_APPLY_SNAPSHOT, [["not", "a", "snapshot"]])
    for bad in (["-1"], [-1], [True], [1.5], [None], []):
        json_msg("aws", TASK_AWS_SET_DESIRED, bad)
    json_msg("aws", TASK_AWS_TERMINATE, ["not-an-instance"])
    json_msg("aws", TASK_AWS_TERMINATE, [{"id": "i-1"}])
    # the one-instance tag job of a version that never shipped: unknown here
    json_msg("aws", "warmpool.aws.tag_assigned", ["i-0"], {"project_id": "../x", "assigned_at": "now"})
    json_msg("aws", TASK_AWS_TAG_ASSIGNMENTS, [[["i-0", "../x", "now"], ["not-an-instance", "p", "t"], "junk", [1, 2]]])
    json_msg("aws", TASK_AWS_TAG_ASSIGNMENTS, ["not-a-list"])
    json_msg("aws", TASK_AWS_TAG_ASSIGNMENTS, [])
    # unknown task names
    for name in ("warmpool.nope", "os.system", "", "warmpool.assign\x00"):
        json_msg("pool", name, ["x"])
        json_msg("aws", name, ["x"])
    # bodies that are not what they claim to be
    headers, _ = celery_message(TASK_ASSIGN, ["x"])
    out.append(("pool", "application/json", b"\xff\xfe{not json", headers))
    out.append(("pool", "application/json", b"[1, 2", headers))
    out.append(("pool", "application/json", json.dumps([["ok-1"], {}, {}]).encode(), None))  # no task header
    # pickle (and yaml): refused by content type, never deserialized
    for queue in ("pool", "aws"):
        for task in (TASK_ASSIGN, TASK_AWS_TAG_ASSIGNMENTS):
            headers, _ = celery_message(task, ["x"])
            body = pickle.dumps(((Unpickled(marker),), {}, {}))
            out.append((queue, "application/x-python-serialize", body, headers))
        headers, _ = celery_message(TASK_ASSIGN, ["x"])
        out.append((queue, "application/x-yaml", f"!!python/object/apply:os.makedirs ['{marker}']".encode(), headers))
    return out


def test_poisoned_messages_are_rejected_pickle_is_never_loaded_and_workers_keep_serving(
    stack: FaultStack, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    messages = poisoned_messages(marker)

    with unchanged(stack):
        # when poisoned messages land on both queues
        with Connection(stack.infra.broker.url(0)) as conn:
            producer = conn.Producer()
            for queue, content_type, body, headers in messages:
                producer.publish(
                    body,
                    exchange="",
                    routing_key=queue,
                    content_type=content_type,
                    content_encoding="binary" if content_type != "application/json" else "utf-8",
                    headers=headers or {},
                    delivery_mode=2,
                )

        # expect each consumed and dropped (nothing stays queued or unacknowledged to come back)
        broker = stack.infra.broker.client()
        with contextlib.closing(broker):
            wait_for(
                lambda: broker.llen("pool") == 0 and broker.llen("aws") == 0 and not broker.hlen("unacked"),
                timeout_s=30,
                what="the poisoned messages to be consumed",
            )
        # and the workers still running and serving
        assert stack.procs.alive("pool") and stack.procs.alive("aws")
        status = stack.client.status()
        assert status["counts"]["assigned"] == 1

    # expect pickle never unpickled, and the refusal visible in the logs
    assert not marker.exists(), "a pickle payload was deserialized"
    logs = stack.log_text("pool") + stack.log_text("aws")
    assert "ContentDisallowed" in logs or "Refusing to deserialize" in logs
    # and the pool still works end to end
    machine = stack.client.assign("after-poison", wait=10)
    assert stack.client.release("after-poison") is True
    assert_invariants(stack, holders={"holder": stack.store.view().projects["holder"]}, settle=True)
    assert machine.instance_id
