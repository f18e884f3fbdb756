"""Webhooks and the operator settings in the pools file (WARMPOOL_CONFIG): per pool, or for every pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.cli_ops import pool_webhooks
from tasks.errors import ConfigError
from tasks.hooks.config import Webhook
from tasks.pools import load_deployment

pytestmark = pytest.mark.timeout(30)

FILE = """
webhooks = [{ url = "https://hooks.example/all", secret = "s-all" }]
[pools.small]
asg = "ide-small"
dry_run = 1
[pools.gpu]
asg = "ide-gpu"
adopt_hold = 0
webhooks = [{ url = "https://hooks.example/gpu", secret = "s-gpu" }, { url = "http://10.0.0.5:8080/", secret = "k" }]
"""


def load(tmp_path: Path, text: str, **env: str) -> object:
    path = tmp_path / "warmpool.toml"
    path.write_text(text, encoding="utf-8")
    return load_deployment({"WARMPOOL_CONFIG": str(path), **env})


def test_a_pools_own_list_or_the_top_level_one(tmp_path: Path) -> None:
    d = load(tmp_path, FILE)
    small, gpu = d.pool("small"), d.pool("gpu")  # type: ignore[attr-defined]
    assert small.webhooks == (Webhook("https://hooks.example/all", "s-all"),)
    assert [h.url for h in gpu.webhooks] == ["https://hooks.example/gpu", "http://10.0.0.5:8080/"]
    assert pool_webhooks(small) == small.webhooks
    # and the operator settings per pool
    assert (small.settings.dry_run, small.settings.adopt_hold) == (1, 1)
    assert (gpu.settings.dry_run, gpu.settings.adopt_hold) == (0, 0)


def test_without_a_list_the_environments_webhook(tmp_path: Path) -> None:
    d = load(
        tmp_path,
        "[pools.a]\nasg = 'x'\n",
        WARMPOOL_WEBHOOK_URL="https://env.example/h",
        WARMPOOL_WEBHOOK_SECRET="env-secret",
    )
    assert d.pool("a").webhooks == ()  # type: ignore[attr-defined]
    assert pool_webhooks(d.pool("a")) == (Webhook("https://env.example/h", "env-secret"),)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[pools.a]\nasg = 'x'\nwebhooks = [{ url = 'ftp://x', secret = 'k' }]\n", "[pools.a]: webhooks[0].url"),
        ("webhooks = [{ url = 'https://x/' }]\n[pools.a]\nasg = 'x'\n", "top level webhooks[0].secret"),
        ("[pools.a]\nasg = 'x'\nwebhooks = 'https://x/'\n", "webhooks must be a list"),
        ("[pools.a]\nasg = 'x'\ndry_run = 'yes'\n", "dry_run = 'yes'"),
    ],
)
def test_a_bad_entry_is_one_line_naming_it(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert any(expected in p for p in caught.value.problems), caught.value.problems
