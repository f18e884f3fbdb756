"""Reading the event stream: the readers (sync, asyncio), ``warmpool events`` and the gateway's SSE ``GET /v1/events``.

Events are written into a real Redis stream as the pool worker writes them
(one field ``event`` of JSON); each test uses a pool name of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from producer.cli import main
from producer.events import AsyncEventReader, EventReader, Notice, check_since
from producer.gateway import create_app
from producer.gateway.access import Access
from producer.gateway.sse import EventFeed
from producer.tokens import TokenStore, make_scope
from tasks.errors import InvalidRequest
from tasks.state.keys import PoolKeys
from tests.conftest import REDIS_URL
from tests.gateway.gwfakes import FakePool
from tests.gateway.live import served, write_event
from tests.stacks import wait_for

BASE = {"id", "at", "pool", "type", "project_id", "instance_id", "reason"}


@pytest.fixture
def pool_name() -> str:
    return f"events-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def state(redis_url: str, pool_name: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.delete(PoolKeys.for_group(pool_name).events)
    client.close()


def key_of(pool_name: str) -> str:
    return PoolKeys.for_group(pool_name).events


def only_events(items: list[Any]) -> list[dict[str, Any]]:
    return [i for i in items if isinstance(i, dict)]


# -- the readers -----------------------------------------------------------------------
def test_the_reader_adds_id_and_pool_and_resumes_after_since(state: redis.Redis, pool_name: str) -> None:
    key = key_of(pool_name)
    first = write_event(state, key, "launched", instance_id="i-1")
    write_event(state, key, "ready", instance_id="i-1")
    third = write_event(state, key, "assigned", instance_id="i-1", project_id="p1", extra_key=5)
    reader = EventReader(state, pool=pool_name, key=key)

    everything = list(reader.read("0"))
    assert [e["type"] for e in everything] == ["launched", "ready", "assigned"]
    assert all(BASE <= set(e) and e["pool"] == pool_name for e in everything)
    assert everything[0]["id"] == first and everything[2]["id"] == third and everything[2]["extra_key"] == 5
    assert [e["type"] for e in reader.read(first)] == ["ready", "assigned"]
    assert list(reader.read(third)) == [] and list(reader.read("$")) == []


def test_a_trimmed_stream_resumes_from_the_oldest_kept_event_with_one_notice(
    state: redis.Redis, pool_name: str
) -> None:
    key = key_of(pool_name)
    old = write_event(state, key, "launched", instance_id="i-old")
    for i in range(5):
        write_event(state, key, "ready", instance_id=f"i-{i}")
    state.xtrim(key, maxlen=3, approximate=False)  # "old" and two more are gone
    oldest = state.xrange(key, count=1)[0][0].decode()

    items = list(EventReader(state, pool=pool_name, key=key).read(old))
    notices = [i for i in items if isinstance(i, Notice)]
    assert len(notices) == 1 and notices[0].resumed_from == oldest and old in notices[0].message
    assert isinstance(items[0], Notice) and [e["id"] for e in only_events(items)][0] == oldest
    assert len(only_events(items)) == 3


def test_following_returns_an_event_as_soon_as_it_is_written(state: redis.Redis, pool_name: str) -> None:
    key = key_of(pool_name)
    start = write_event(state, key, "launched", instance_id="i-9")
    stream = EventReader(state, pool=pool_name, key=key).read(start, follow=True, block_ms=60_000)
    # the write lands while the reader blocks (or just before it reads): either way it is returned
    writer = threading.Timer(0.2, write_event, (state, key, "released"), {"project_id": "p9", "reason": "release"})
    writer.start()
    try:
        event = next(stream)
    finally:
        writer.join()
    assert isinstance(event, dict) and event["type"] == "released" and event["project_id"] == "p9"


def test_the_async_reader_follows_and_says_when_nothing_came(state: redis.Redis, pool_name: str) -> None:
    key = key_of(pool_name)
    write_event(state, key, "launched", instance_id="i-1")

    async def go() -> list[Any]:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            reader = AsyncEventReader(client, pool=pool_name, key=key)
            got: list[Any] = []
            async for item in reader.read("0", follow=True, block_ms=50):
                got.append(item)
                if item is None:  # the heartbeat after a quiet block
                    break
            got.append(await reader.latest(5))
            return got
        finally:
            await client.aclose()

    launched, heartbeat, latest = asyncio.run(go())
    assert launched["type"] == "launched" and launched["pool"] == pool_name
    assert heartbeat is None and [e["type"] for e in latest] == ["launched"]


@pytest.mark.parametrize("bad", ["yesterday", "12-ab", "-1", "", "1-2-3"])
def test_a_bad_since_is_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="^since "):
        check_since(bad)


# -- warmpool events ---------------------------------------------------------------------
def events_env(pool_name: str) -> dict[str, str]:
    return {"WARMPOOL_REDIS_URL": REDIS_URL, "WARMPOOL_ASG_NAME": pool_name}


def test_warmpool_events_json_prints_one_object_per_line(
    state: redis.Redis, pool_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in events_env(pool_name).items():
        monkeypatch.setenv(name, value)
    key = key_of(pool_name)
    write_event(state, key, "assigned", project_id="p1", instance_id="i-1")
    write_event(state, key, "terminated", instance_id="i-2", reason="surplus")

    assert main(["events", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["assigned", "terminated"]
    assert all(BASE <= set(json.loads(line)) for line in lines)

    assert main(["events"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert "assigned" in text[0] and "project=p1" in text[0] and "instance=i-1" in text[0]
    assert "reason=surplus" in text[1]


def test_warmpool_events_says_once_on_stderr_that_the_stream_was_trimmed(
    state: redis.Redis, pool_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in events_env(pool_name).items():
        monkeypatch.setenv(name, value)
    key = key_of(pool_name)
    old = write_event(state, key, "launched")
    write_event(state, key, "ready")
    write_event(state, key, "ready")
    state.xtrim(key, maxlen=1, approximate=False)

    assert main(["events", "--since", old, "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and err.count("trimmed") == 1, (out, err)


def test_warmpool_events_refuses_a_bad_since_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["events", "--since", "last-tuesday"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("warmpool: since 'last-tuesday'")


def test_warmpool_events_follow_prints_until_interrupted(state: redis.Redis, pool_name: str) -> None:
    env = {**os.environ, **events_env(pool_name), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "events", "--follow", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        write_event(state, key_of(pool_name), "lost", instance_id="i-7", project_id="p7")
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line)["type"] == "lost"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- GET /v1/events (Server-Sent Events) ---------------------------------------------------
def sse_app(pool_name: str, tokens_key: str, *, heartbeat_s: float = 15.0) -> Any:
    client = aioredis.Redis.from_url(REDIS_URL)
    feed = EventFeed({pool_name: (aioredis.Redis.from_url(REDIS_URL), key_of(pool_name))}, heartbeat_s=heartbeat_s)
    access = Access(api_token="admin-secret", client=client, token_cache_s=0.0, tokens_key=tokens_key)
    return create_app(FakePool(pools=(pool_name,)), token="admin-secret", access=access, events=feed)


def read_frames(lines: Iterator[str], *, until: int) -> list[dict[str, str]]:
    """Parsed SSE frames (comments as {"comment": ...}) until ``until`` frames were read.

    ``lines`` is the caller's ``response.iter_lines()``, kept by the caller for as
    long as the stream should stay open: dropping that iterator closes it
    (httpcore closes a connection whose body iterator is finalized unread).
    """
    frames: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in lines:
        if line == "":
            if current:
                frames.append(current)
                current = {}
            if len(frames) >= until:
                break
            continue
        name, _, value = line.partition(":")
        current[name or "comment"] = value.strip()
    return frames


@pytest.fixture
def tokens(state: redis.Redis) -> Iterator[TokenStore]:
    store = TokenStore(state, key=f"test:tokens:{uuid.uuid4().hex}")
    yield store
    state.delete(store.key)


def test_sse_streams_events_resumes_with_last_event_id_and_filters_by_prefix(
    state: redis.Redis, pool_name: str, tokens: TokenStore
) -> None:
    _, secret = tokens.create("team-a-reader", make_scope("read", prefix="team-a-"))
    key = key_of(pool_name)
    first = write_event(state, key, "assigned", project_id="team-a-1", instance_id="i-1")
    write_event(state, key, "assigned", project_id="team-b-1", instance_id="i-2")
    third = write_event(state, key, "launched", instance_id="i-3")
    auth = {"Authorization": f"Bearer {secret}"}

    with served(lambda: sse_app(pool_name, tokens.key)) as (url, _):
        with httpx.Client(base_url=url, timeout=10) as http:
            with http.stream("GET", "/v1/events", params={"since": "0"}, headers=auth) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                frames = read_frames(response.iter_lines(), until=3)  # retry, then team-a's event and the pool-wide one
            events = [f for f in frames if "data" in f]
            assert [(f["id"], f["event"]) for f in events] == [(first, "assigned"), (third, "launched")]
            assert json.loads(events[0]["data"])["pool"] == pool_name
            assert "team-b" not in json.dumps(frames)

            # a reconnect with Last-Event-ID gets what came after it only
            later = write_event(state, key, "released", project_id="team-a-1", instance_id="i-1")
            with http.stream("GET", "/v1/events", headers={**auth, "Last-Event-ID": third}) as response:
                resumed = [f for f in read_frames(response.iter_lines(), until=2) if "data" in f]
            assert [f["id"] for f in resumed] == [later]


def test_sse_sends_one_notice_for_a_trimmed_stream_then_heartbeats_and_ends_on_disconnect(
    state: redis.Redis, pool_name: str, tokens: TokenStore
) -> None:
    key = key_of(pool_name)
    old = write_event(state, key, "launched")
    for _ in range(3):
        write_event(state, key, "ready")
    state.xtrim(key, maxlen=2, approximate=False)
    auth = {"Authorization": "Bearer admin-secret"}

    with served(lambda: sse_app(pool_name, tokens.key, heartbeat_s=0.05)) as (url, app):
        feed: EventFeed = app.state.events
        with httpx.Client(base_url=url, timeout=10) as http:
            with http.stream("GET", "/v1/events", headers={**auth, "Last-Event-ID": old}) as response:
                lines = response.iter_lines()
                frames = read_frames(lines, until=5)
                # still connected (the same lines go on): heartbeats keep coming and the stream is counted open
                assert [f.get("comment") for f in read_frames(lines, until=2)] == ["heartbeat", "heartbeat"]
                assert feed.open == 1, frames
        kinds = [f.get("event") or ("heartbeat" if f.get("comment") == "heartbeat" else "retry") for f in frames]
        assert kinds == ["retry", "notice", "ready", "ready", "heartbeat"]
        assert "trimmed" in json.loads(frames[1]["data"])["message"]
        # the client left: its stream (and blocking read) ends
        wait_for(lambda: feed.open == 0, timeout_s=10, what="the event stream to end after the client left")


def test_sse_is_refused_to_a_token_of_another_pool(state: redis.Redis, pool_name: str, tokens: TokenStore) -> None:
    _, secret = tokens.create("elsewhere", make_scope("read", pools=["other-pool"]))
    with served(lambda: sse_app(pool_name, tokens.key)) as (url, _):
        answer = httpx.get(url + "/v1/events", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert answer.status_code == 403 and answer.json()["code"] == "forbidden"
