"""The pool's economics on /metrics: built from the worker's status snapshot (the figures it keeps)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from producer.gateway.metrics import GatewayMetrics
from tests.unit.test_service import Harness


def test_economics_series_come_from_the_pool_status() -> None:
    # given a pool whose worker served one assign warm and terminated one machine on release
    h = Harness()
    h.settle()
    h.service.assign("p-1")
    h.service.release("p-1")
    h.settle()
    status = h.service.status()
    # when the gateway renders its metrics from that snapshot
    text, _ = GatewayMetrics().render({"default": status})
    samples = {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pool"))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }
    # expect the worker's figures, the same whichever replica renders them
    assert samples[("warmpool_pool_assigns_total", (("served", "warm"),))] == 1
    assert samples[("warmpool_pool_assigns_total", (("served", "waited"),))] == 0
    assert samples[("warmpool_pool_terminations_total", (("reason", "release"),))] == 1
    assert samples[("warmpool_pool_wait_seconds_bucket", (("le", "+Inf"),))] == 1
    assert samples[("warmpool_policy_idle_target", ())] == 2
    assert samples[("warmpool_policy_info", (("reason", "fixed"), ("source", "config"), ("spec", "fixed")))] == 1
    assert ("warmpool_idle_machine_seconds_total", ()) in samples
    assert samples[("warmpool_pool_launches_total", ())] >= 1
