"""The StateStore event contract (part of the store contract suite): both stores record the same events.

Every transition that matters writes its event in the same atomic step (tasks/state/lua for
RedisStore, under the one lock for InMemoryStore); the stream is bounded and read by id.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from tasks.errors import InvalidRequest
from tasks.pool.events import EVENT_TYPES, Event, StoredEvent
from tasks.pool.model import AWAITING_READY, AddressKind, MachineState
from tasks.pool.ports import StateStore
from tasks.state.keys import EVENTS_KEEP
from tasks.state.memory_store import InMemoryStore
from tasks.state.redis_store import RedisStore
from tests.builders import iid, prime, ready, snapshot
from tests.contract.test_store_contract import T0, assign, load

pytestmark = pytest.mark.timeout(60)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENTRY_ID = re.compile(r"^\d+-\d+$")


def summary(events: list[StoredEvent]) -> list[tuple[Any, ...]]:
    return [(e.event["type"], e.event["project_id"], e.event["instance_id"], e.event["reason"]) for e in events]


def every_transition(store: StateStore) -> None:
    """One of each recorded transition, in a fixed order."""
    load(store, snapshot([ready(0), ready(1), ready(2), ready(3, lifecycle_state="Pending")], observed_at=T0))
    assign(store, "p1")  # iid(0): idle longest (launched first, same idle-since: lowest id)
    store.release("p1", now=T0 + 20)
    store.assign("p2", now=T0 + 21, assigned_at="x", idle_target=0, lease_s=5)
    store.release("p2", now=T0 + 30, lease_expired_before=T0 + 30)
    store.claim_for_termination(
        [iid(3)], now=T0 + 31, detail="unready", expected=MachineState.PENDING, reason="unready"
    )
    assign(store, "p3", now=T0 + 32)
    store.release("p3", now=T0 + 33, reason="force_release")
    store.append_events([Event("paused", T0 + 34, reason="operator")])
    # a refresh: iid(0..3) are leaving (terminated), a new instance appears, iid(2) stays idle and is taken
    assign(store, "p4", now=T0 + 35)
    load(store, snapshot([ready(2, lifecycle_state="Terminated", ec2_state="terminated"), ready(7)]), now=T0 + 40)


EXPECTED = [
    ("launched", None, iid(0), None),
    ("ready", None, iid(0), None),
    ("launched", None, iid(1), None),
    ("ready", None, iid(1), None),
    ("launched", None, iid(2), None),
    ("ready", None, iid(2), None),
    ("launched", None, iid(3), "lifecycle Pending"),
    ("assigned", "p1", iid(0), None),
    ("released", "p1", iid(0), "release"),
    ("assigned", "p2", iid(1), None),
    ("lease_expired", "p2", iid(1), "lease_expired"),
    ("terminated", None, iid(3), "unready"),
    ("assigned", "p3", iid(2), None),
    ("released", "p3", iid(2), "force_release"),
    ("paused", None, None, "operator"),
]


class TestEvents:
    def test_every_transition_is_recorded_once_in_order(self, store: StateStore) -> None:
        # given an empty stream (a primed store records nothing: its group was empty)
        assert store.events() == []
        # when one of each transition happens
        load(store, snapshot([ready(0), ready(1), ready(2), ready(3, lifecycle_state="Pending")], observed_at=T0))
        got = summary(store.events())
        # expect launched + ready per ready machine, launched only for the pending one
        assert sorted(got) == sorted(EXPECTED[:7])

    def test_the_whole_sequence(self, store: StateStore) -> None:
        every_transition(store)
        events = store.events(count=1000)
        got = summary(events)
        # the refresh's events come in the order of its reconciliation: compare them as a set
        assert sorted(got[:7]) == sorted(EXPECTED[:7])
        assert got[7 : len(EXPECTED)] == EXPECTED[7:]
        tail = got[len(EXPECTED) :]
        assert ("assigned", None, iid(4), None) not in tail  # sanity: nothing invented
        assert sorted(tail) == sorted([("launched", None, iid(7), None), ("ready", None, iid(7), None)])

    def test_shape_of_each_event(self, store: StateStore) -> None:
        every_transition(store)
        events = store.events(count=1000)
        assert events
        for e in events:
            assert ENTRY_ID.fullmatch(e.id)
            assert e.event["type"] in EVENT_TYPES
            assert ISO.fullmatch(e.event["at"])
            assert {"at", "type", "project_id", "instance_id", "reason"} <= set(e.event)
        published = events[0].published("pool-a")
        assert published["id"] == events[0].id and published["pool"] == "pool-a"

    def test_ids_increase_and_paging_resumes_after_an_id(self, store: StateStore) -> None:
        every_transition(store)
        everything = store.events(count=1000)
        ids = [e.id for e in everything]
        assert ids == sorted(ids, key=lambda i: tuple(int(x) for x in i.split("-")))
        assert len(set(ids)) == len(ids)
        # when read five at a time
        paged: list[StoredEvent] = []
        after = "0-0"
        while batch := store.events(after=after, count=5):
            paged.extend(batch)
            after = batch[-1].id
        assert paged == everything
        assert store.events(after=ids[-1]) == []
        assert store.events(count=0) == []
        ms = ids[0].split("-")[0]  # an id without its sequence means <ms>-0, as Redis reads it
        assert store.events(after=ms, count=1000) == [e for e in everything if e.id != f"{ms}-0"]
        for bad in ("abc", "1-2-3", "", "-1", "1-"):
            with pytest.raises(InvalidRequest):
                store.events(after=bad)

    def test_lost_machine(self, store: StateStore) -> None:
        load(store, snapshot([ready(0), ready(1)], observed_at=T0))
        assign(store, "p1")
        after = store.events(count=1000)[-1].id
        load(store, snapshot([ready(1)]), now=T0 + 40)
        assert summary(store.events(after=after)) == [("lost", "p1", iid(0), "left the group")]

    def test_scale_in_and_readiness(self, store: StateStore) -> None:
        load(store, snapshot([ready(0)], observed_at=T0))
        after = store.events()[-1].id
        store.claim_for_termination([iid(0)], now=T0 + 1, detail="scale-in")
        assert summary(store.events(after=after)) == [("terminated", None, iid(0), "surplus")]
        # a machine waiting for its readiness check becomes ready by mark_ready
        load(store, snapshot([ready(5)]), now=T0 + 2)
        pending = store.view().machines[iid(5)]
        if pending.state is MachineState.IDLE:  # no readiness check configured: a second load with one
            store.reset()
            prime(store)
            numbered = replace(snapshot([ready(5)]), seq=store.next_refresh_seq())
            store.apply_snapshot(numbered, kind=AddressKind.PUBLIC, now=T0 + 3, require_ready_check=True)
        assert store.view().machines[iid(5)].detail == AWAITING_READY
        after = store.events()[-1].id
        store.mark_ready([iid(5)], now=T0 + 4)
        assert summary(store.events(after=after)) == [("ready", None, iid(5), None)]

    def test_withdrawn_assignment_is_released_with_reason_withdrawn(self, store: StateStore) -> None:
        load(store, snapshot([ready(0)], observed_at=T0))
        store.assign("p1", now=T0 + 1, assigned_at="x", idle_target=0, request_id="r1")
        after = store.events()[-1].id
        store.withdraw("r1", "p1", now=T0 + 2)
        assert summary(store.events(after=after)) == [("released", "p1", iid(0), "withdrawn")]

    def test_no_event_when_nothing_changed(self, store: StateStore) -> None:
        load(store, snapshot([ready(0)], observed_at=T0))
        assign(store, "p1")
        before = store.events(count=1000)
        assign(store, "p1")  # already held
        store.release("nobody", now=T0 + 5)
        store.claim_for_termination([iid(0)], now=T0 + 6, detail="scale-in")  # assigned: not claimed
        load(store, snapshot([ready(0)]), now=T0 + 7)  # unchanged
        assert store.events(count=1000) == before

    def test_the_stream_is_bounded(self, store: StateStore) -> None:
        # when more events than EVENTS_KEEP are written
        extra = 1_000
        store.append_events([Event("paused", T0, reason=str(n)) for n in range(EVENTS_KEEP + extra)])
        kept = store.events(count=EVENTS_KEEP + extra)
        # expect the oldest trimmed (Redis trims approximately: whole nodes), the newest kept
        assert EVENTS_KEEP <= len(kept) < EVENTS_KEEP + extra
        assert kept[-1].event["reason"] == str(EVENTS_KEEP + extra - 1)


def test_both_stores_record_the_same_events(redis_store_factory: Callable[[str | None], RedisStore]) -> None:
    # given the same transitions on each store
    memory, redis_store = prime(InMemoryStore()), redis_store_factory(None)
    every_transition(memory)
    every_transition(redis_store)
    # expect the same events (an event's time, too); a refresh's events compared as a set
    mem = [e.event for e in memory.events(count=1000)]
    red = [e.event for e in redis_store.events(count=1000)]
    assert len(mem) == len(red) > len(EXPECTED)
    key = sorted  # dict order is not part of the contract; compare canonical items
    assert [key(e.items()) for e in mem[7 : len(EXPECTED)]] == [key(e.items()) for e in red[7 : len(EXPECTED)]]
    assert sorted(str(sorted(e.items())) for e in mem) == sorted(str(sorted(e.items())) for e in red)


class TestAdoptAndGroupFields:
    def test_adopt_all_or_none_with_its_events(self, store: StateStore) -> None:
        load(store, snapshot([ready(0), ready(1), ready(2)], observed_at=T0))
        taken = assign(store, "p1").machine
        assert taken is not None
        free = [i for i in (iid(0), iid(1), iid(2)) if i != taken.instance_id]
        after = store.events(count=1000)[-1].id
        # a bad pair (another project's machine, an unknown one, a project holding another) refuses all
        for bad in ({"old-1": free[0], "old-2": taken.instance_id}, {"old-1": "i-0000000000000dead"}):
            machines, why = store.adopt(bad, now=T0 + 1, assigned_at="x")
            assert machines == [] and why
        assert (
            store.adopt({"p1": free[0]}, now=T0 + 1, assigned_at="x")[1]
            == f"project p1 already holds {taken.instance_id}"
        )
        # a dry run changes nothing
        machines, why = store.adopt({"old-1": free[0]}, now=T0 + 1, assigned_at="x", dry_run=True)
        assert why is None and [m.state for m in machines] == [MachineState.IDLE]
        assert store.events(after=after) == [] and store.view().projects == {"p1": taken.instance_id}
        # the real one assigns, takes the machine out of the idle set, and records it
        machines, why = store.adopt({"old-1": free[0], "p1": taken.instance_id}, now=T0 + 2, assigned_at="x")
        assert why is None
        assert {m.instance_id: (m.state, m.project_id, m.detail) for m in machines}[free[0]] == (
            MachineState.ASSIGNED,
            "old-1",
            "adopted",
        )
        assert store.view().projects == {"p1": taken.instance_id, "old-1": free[0]}
        assert summary(store.events(after=after)) == [("adopted", "old-1", free[0], "adopt")]
        assert assign(store, "p9").machine is not None and assign(store, "p10").machine is None

    def test_operator_fields_of_the_group_record(self, store: StateStore) -> None:
        load(store, snapshot([ready(0)], observed_at=T0))
        assert not store.group().paused and store.group().unadopted == ()
        store.update_group(
            {"paused_at": repr(T0), "unadopted": '["i-00000000000000001"]', "recycle_version": "7"},
            [Event("paused", T0, reason="operator")],
        )
        g = store.group()
        assert g.paused and g.paused_at == T0 and g.unadopted == ("i-00000000000000001",) and g.recycle_version == "7"
        assert summary(store.events())[-1] == ("paused", None, None, "operator")
        load(store, snapshot([ready(0)]), now=T0 + 5)  # a refresh keeps them
        assert store.group().paused and store.group().recycle_version == "7"

    def test_assign_and_release_say_whether_the_pool_is_paused(self, store: StateStore) -> None:
        load(store, snapshot([ready(0), ready(1)], observed_at=T0))
        first = assign(store, "p1")
        assert first.machine is not None and not first.paused
        store.update_group({"paused_at": repr(T0 + 1)})
        second = assign(store, "p2")
        assert second.machine is not None and second.paused and assign(store, "p2").paused  # held again too
        released = store.release("p1", now=T0 + 2)
        assert released.machine is not None and released.paused
        store.update_group({"paused_at": "0"})
        assert not store.release("p2", now=T0 + 3).paused
