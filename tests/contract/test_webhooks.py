"""Webhooks against a real local HTTP receiver and real Redis: signed, at least once, bounded, off the pool.

The receiver plays a good endpoint, one answering 500, one redirecting and one that hangs.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.errors import ConfigError
from tasks.hooks.config import Webhook, parse_webhooks, webhook, webhooks_from_settings
from tasks.hooks.deliver import DeliveryPolicy, WebhookDeliverer, webhook_health
from tasks.hooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature, verify
from tasks.pool.events import Event
from tasks.state.redis_store import RedisStore
from tests.builders import ready, snapshot
from tests.contract.test_store_contract import T0, assign, load

pytestmark = pytest.mark.timeout(60)
SECRET = "s3cret-for-tests"
FAST = DeliveryPolicy(timeout_s=0.5, attempts=3, backoff_base_s=0.01, backoff_max_s=0.05, block_ms=50)


class Receiver:
    """A local HTTP endpoint whose behaviour a test switches: good, fail (500), redirect, hang."""

    def __init__(self) -> None:
        self.mode = "good"
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        self.release_hang = threading.Event()
        self.on_attempt: Callable[[], None] = lambda: None
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                receiver.on_attempt()
                if self.path == "/target":  # where the redirect points: must never be reached
                    receiver.received.append(({"redirected": "yes"}, body))
                mode = receiver.mode
                if mode == "hang":
                    receiver.release_hang.wait(5)
                    return
                if mode == "fail":
                    self.send_response(500)
                elif mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "/target")
                else:
                    self.send_response(200)
                    receiver.received.append((dict(self.headers), body))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for headers, body in self.received if "redirected" not in headers]

    def close(self) -> None:
        self.release_hang.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def rstore(redis_store_factory: Callable[[str | None], RedisStore]) -> RedisStore:
    return redis_store_factory(None)


def deliverer(store: RedisStore, url: str, *, policy: DeliveryPolicy = FAST) -> WebhookDeliverer:
    d = WebhookDeliverer(store._r, pool="pool-a", keys=store.keys, webhook=Webhook(url, SECRET), policy=policy)
    d.ensure_group()
    return d


def drain(d: WebhookDeliverer) -> int:
    total = 0
    while settled := d.run_once(block_ms=50):
        total += settled
    return total


class TestDelivery:
    def test_each_event_is_posted_once_signed_with_its_id_and_pool(
        self, rstore: RedisStore, receiver: Receiver
    ) -> None:
        # given a webhook subscribed before anything happened
        d = deliverer(rstore, receiver.url)
        # when machines arrive and a project takes one and gives it back
        load(rstore, snapshot([ready(0), ready(1)], observed_at=T0))
        assign(rstore, "p1")
        rstore.release("p1", now=T0 + 20)
        stored = rstore.events(count=100)
        assert drain(d) == len(stored) == 6
        # expect every event, in order, once, as the contract's published object
        got = receiver.events()
        assert [e["id"] for e in got] == [s.id for s in stored]
        assert [e["type"] for e in got][-2:] == ["assigned", "released"]
        for event in got:
            assert {"id", "at", "pool", "type", "project_id", "instance_id", "reason"} <= set(event)
            assert event["pool"] == "pool-a"
        # and every request carries its event id and a valid signature over its exact body
        for headers, body in receiver.received:
            assert headers[EVENT_ID_HEADER] == json.loads(body)["id"]
            stamp = int(headers[SIGNATURE_HEADER].split(",")[0][2:])
            assert verify(SECRET, body, headers[SIGNATURE_HEADER], now=stamp)
            assert not verify("another secret", body, headers[SIGNATURE_HEADER], now=stamp)
        assert webhook_health(rstore._r, rstore.keys)[d.webhook.group]["delivered"] == 6

    def test_a_failing_endpoint_is_retried_with_back_off_then_given_up_and_reported(
        self, rstore: RedisStore, receiver: Receiver
    ) -> None:
        d = deliverer(rstore, receiver.url)
        receiver.mode = "fail"
        load(rstore, snapshot([ready(0)], observed_at=T0))  # launched + ready
        # when delivering against an endpoint answering 500
        assert drain(d) == 2
        # expect each event tried FAST.attempts times, then given up (acknowledged), never forever
        assert receiver.attempts == 2 * FAST.attempts
        health = webhook_health(rstore._r, rstore.keys)[d.webhook.group]
        assert health["given_up"] == 2 and health["delivered"] == 0 and health["last_error"] == "HTTP 500"
        assert health["retried"] == 2 * (FAST.attempts - 1)
        # and when the endpoint recovers, the next event is delivered
        receiver.mode = "good"
        assign(rstore, "p1")
        assert drain(d) == 1 and [e["type"] for e in receiver.events()] == ["assigned"]

    def test_a_webhook_that_keeps_failing_is_tried_once_per_event(self, rstore: RedisStore, receiver: Receiver) -> None:
        d = deliverer(rstore, receiver.url)
        receiver.mode = "fail"
        load(rstore, snapshot([ready(n) for n in range(3)], observed_at=T0))  # 6 events
        drain(d)
        # the first suspend_after events got every attempt, each later one a single try
        assert receiver.attempts == FAST.suspend_after * FAST.attempts + (6 - FAST.suspend_after)
        assert webhook_health(rstore._r, rstore.keys)[d.webhook.group]["failing"] is True

    def test_a_redirect_is_a_failure_and_never_followed(self, rstore: RedisStore, receiver: Receiver) -> None:
        d = deliverer(rstore, receiver.url)
        receiver.mode = "redirect"
        assign(rstore, "nobody")  # nothing to hand out: no event
        rstore.append_events([])
        load(rstore, snapshot([ready(0)], observed_at=T0))
        drain(d)
        assert receiver.received == []  # /target never reached
        assert "redirect" in webhook_health(rstore._r, rstore.keys)[d.webhook.group]["last_error"]

    def test_a_hanging_endpoint_times_out(self, rstore: RedisStore, receiver: Receiver) -> None:
        policy = DeliveryPolicy(timeout_s=0.2, attempts=1, block_ms=50)
        d = deliverer(rstore, receiver.url, policy=policy)
        receiver.mode = "hang"
        load(rstore, snapshot([ready(0)], observed_at=T0))
        assert drain(d) == 2
        assert "timed out" in webhook_health(rstore._r, rstore.keys)[d.webhook.group]["last_error"]

    def test_assigns_never_wait_for_a_webhook(self, rstore: RedisStore, receiver: Receiver) -> None:
        # given a deliverer thread stuck on a hanging endpoint
        receiver.mode = "hang"
        d = deliverer(rstore, receiver.url, policy=DeliveryPolicy(timeout_s=30, attempts=1, block_ms=50))
        load(rstore, snapshot([ready(n) for n in range(5)], observed_at=T0))
        thread = threading.Thread(target=d.run, daemon=True)
        thread.start()
        try:
            # when projects take machines meanwhile, expect every assign served and recorded
            served = [assign(rstore, f"p{n}").machine for n in range(5)]
            assert all(m is not None for m in served)
            assert [e.event["type"] for e in rstore.events(count=100)].count("assigned") == 5
        finally:
            d.stop.set()
            receiver.release_hang.set()
            thread.join(10)

    def test_a_delivery_cut_short_is_resumed_by_the_next_deliverer(
        self, rstore: RedisStore, receiver: Receiver
    ) -> None:
        # given a deliverer stopped while retrying an event (the process was restarted)
        receiver.mode = "fail"
        first = deliverer(rstore, receiver.url, policy=DeliveryPolicy(attempts=3, backoff_base_s=30, block_ms=50))
        load(rstore, snapshot([ready(0)], observed_at=T0))
        receiver.on_attempt = first.stop.set  # stopped during its first attempt
        assert first.run_once(block_ms=50) == 0  # that attempt failed; it stopped in the back-off
        assert receiver.attempts == 1
        # when a new deliverer starts on the same group and the endpoint is back
        receiver.mode = "good"
        second = deliverer(rstore, receiver.url)
        drain(second)
        # expect both events delivered, the pending one first
        assert [e["type"] for e in receiver.events()] == ["launched", "ready"]


class TestConfig:
    def test_a_list_of_tables(self) -> None:
        hooks = parse_webhooks([{"url": "https://a.example/x", "secret": "k1"}, {"url": "http://b:81/", "secret": "k"}])
        assert hooks == (Webhook("https://a.example/x", "k1"), Webhook("http://b:81/", "k"))
        assert hooks[0].group != hooks[1].group and hooks[0].group.startswith("webhook:")
        assert "k1" not in repr(hooks[0])

    @pytest.mark.parametrize(
        ("items", "named"),
        [
            ("https://a/", "webhooks must be a list"),
            ([{"url": "ftp://a/", "secret": "k"}], "webhooks[0].url"),
            ([{"url": "https://a/ b", "secret": "k"}], "webhooks[0].url"),
            ([{"url": "https://user:pw@a/", "secret": "k"}], "webhooks[0].url"),
            ([{"url": "https://a:99999/", "secret": "k"}], "webhooks[0].url"),
            ([{"url": "https://a/"}], "webhooks[0].secret"),
            ([{"url": "https://a/", "secret": "two words"}], "webhooks[0].secret"),
            ([{"url": "https://a/", "secret": "k", "retries": 3}], "webhooks[0] has unknown key"),
            ([{"url": "https://a/", "secret": "k"}, {"url": "https://a/", "secret": "j"}], "webhooks[1].url"),
            (["https://a/"], "webhooks[0] must be a table"),
        ],
    )
    def test_bad_entries_are_refused_naming_the_field(self, items: Any, named: str) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_webhooks(items)
        assert named in str(caught.value) and "\n" not in str(caught.value)

    def test_from_settings_both_or_neither(self) -> None:
        class S:
            webhook_url, webhook_secret = "", ""

        assert webhooks_from_settings(S()) == ()
        S.webhook_url = "https://a/"
        with pytest.raises(ConfigError, match="WARMPOOL_WEBHOOK_SECRET"):
            webhooks_from_settings(S())
        S.webhook_secret = "k"
        assert webhooks_from_settings(S()) == (webhook("https://a/", "k"),)


def test_signature_is_hmac_over_timestamp_dot_body() -> None:
    body = b'{"id":"1-0"}'
    header = signature(SECRET, body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify(SECRET, body, header, now=1_700_000_100)
    assert not verify(SECRET, body + b" ", header, now=1_700_000_100)
    assert not verify(SECRET, body, header, now=1_700_001_000)  # too old: a replay
    assert not verify(SECRET, body, "garbage", now=1_700_000_000)


def test_the_verification_snippet_in_the_docs_accepts_our_signatures() -> None:
    # given the Python snippet docs/operations.md gives receivers
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    snippet = doc.split("Verifying a request", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # noqa: S102 (our own documentation)
    body = b'{"id":"1-0","type":"assigned"}'
    header = signature(SECRET, body, timestamp=int(time.time()))
    # expect it to accept a signature warmpool made, and to refuse a tampered body or another secret
    assert namespace["verify"](SECRET, body, header) is True
    assert namespace["verify"](SECRET, body + b"x", header) is False
    assert namespace["verify"]("other", body, header) is False


def test_a_webhook_behind_a_trimmed_stream_resumes_at_the_oldest_kept_event_with_a_notice(
    rstore: RedisStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # given a webhook that has not been given the first events when the stream trims them
    d = deliverer(rstore, receiver.url)
    rstore.append_events([Event("paused", T0, reason=str(n)) for n in range(5)])
    rstore._r.xtrim(rstore.keys.events, maxlen=2, approximate=False)
    # when it delivers, expect the kept events delivered, and one notice (not an error loop)
    assert drain(d) == 2
    assert [e["reason"] for e in receiver.events()] == ["3", "4"]
    assert caplog.text.count("events were trimmed before this webhook got them") == 1
    assert not d.trimmed_before_delivery()  # said once per gap
