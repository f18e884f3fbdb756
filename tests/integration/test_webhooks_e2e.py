"""Webhooks end to end: real workers, moto, and ``warmpool webhooks run`` POSTing to a local receiver.

Counted as a platform team would: every assign, release, lease expiry and loss arrives exactly
once after deduplication by event id, each signed; a deliverer restarted midway loses nothing.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tasks.hooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from tests.contract.test_webhooks import Receiver
from tests.integration.conftest import Stack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]
SECRET = "e2e-webhook-secret"
DELIVERER = "webhooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def start_deliverer(stack: Stack, receiver: Receiver) -> None:
    env = {"WARMPOOL_WEBHOOK_URL": receiver.url, "WARMPOOL_WEBHOOK_SECRET": SECRET}
    stack.local.spawn(DELIVERER, [sys.executable, "-m", "producer.cli", "webhooks", "run"], env=env)


def subscribed(stack: Stack) -> bool:
    r = stack.store._r
    return bool(r.exists(stack.store.keys.events)) and bool(r.xinfo_groups(stack.store.keys.events))


def deduplicated(receiver: Receiver) -> dict[str, dict[str, Any]]:
    """Each event once (by X-Warmpool-Event-Id), after checking every request's signature."""
    seen: dict[str, dict[str, Any]] = {}
    for headers, body in list(receiver.received):
        stamp = int(headers[SIGNATURE_HEADER].split(",")[0][2:])
        assert verify(SECRET, body, headers[SIGNATURE_HEADER], now=stamp), "a bad signature"
        event = json.loads(body)
        assert event["id"] == headers[EVENT_ID_HEADER]
        seen[event["id"]] = event
    return seen


def test_every_change_arrives_once_signed_through_a_deliverer_restart(pool: Stack, receiver: Receiver) -> None:
    # given a deliverer subscribed to the pool's events
    start_deliverer(pool, receiver)
    try:
        wait_for(lambda: subscribed(pool), timeout_s=30, what="the deliverer's consumer group")
        # (a new webhook gets the events from its subscription on)
        before = pool.store.events(count=10_000)
        since = before[-1].id if before else "0-0"
        # when projects take machines and give some back, one lease runs out, one machine is lost
        held = {p: pool.client.assign(p, wait=20).instance_id for p in ("wh-a", "wh-b", "wh-c")}
        assert pool.client.release("wh-a") is True
        # (the deliverer is restarted meanwhile: killed, then started again)
        pool.procs.stop(DELIVERER)
        assert pool.client.release("wh-b") is True
        start_deliverer(pool, receiver)
        leased = pool.client.assign("wh-lease", wait=20, lease=1.0).instance_id
        wait_for(lambda: "wh-lease" not in pool.store.view().projects, timeout_s=30, what="the lease to expire")
        pool.aws("autoscaling").terminate_instance_in_auto_scaling_group(
            InstanceId=held["wh-c"], ShouldDecrementDesiredCapacity=False
        )
        wait_for(lambda: "wh-c" not in pool.store.view().projects, timeout_s=30, what="the loss to be seen")
        # expect every stored event delivered, once after deduplication, with a valid signature
        stored = {e.id for e in pool.store.events(after=since, count=10_000)}
        wait_for(lambda: stored <= set(deduplicated(receiver)), timeout_s=60, what="every event delivered")
        events = deduplicated(receiver)
        mine = [e for e in events.values() if e["project_id"] in ("wh-a", "wh-b", "wh-c", "wh-lease")]
        counts = Counter((e["type"], e["project_id"]) for e in mine)
        assert counts[("assigned", "wh-a")] == counts[("assigned", "wh-b")] == counts[("assigned", "wh-c")] == 1
        assert counts[("released", "wh-a")] == counts[("released", "wh-b")] == 1
        assert counts[("assigned", "wh-lease")] == counts[("lease_expired", "wh-lease")] == 1
        assert counts[("lost", "wh-c")] == 1
        lost = next(e for e in mine if e["type"] == "lost")
        assert lost["instance_id"] == held["wh-c"] and lost["pool"] == "default"
        assert next(e for e in mine if e["type"] == "lease_expired")["instance_id"] == leased
    finally:
        pool.procs.stop(DELIVERER)
