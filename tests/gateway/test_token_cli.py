"""``warmpool token create|list|revoke`` against a real Redis (database 12 of the test Redis, key warmpool:tokens)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from producer.cli import main
from producer.tokens import hash_secret
from tasks.state.keys import TOKENS_KEY
from tests.contract.conftest import REDIS_URL, _in_ci, _redis_problem

# A database of its own: the token key is global, so no other test's tokens meet these.
TOKEN_DB_URL = REDIS_URL.rsplit("/", 1)[0] + "/12"


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    problem = _redis_problem()
    if problem is not None:
        if _in_ci():
            pytest.fail(problem + " (CI is set: Redis is required)")
        pytest.skip(problem)
    for name in ("WARMPOOL_API_TOKEN", "WARMPOOL_API_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WARMPOOL_REDIS_URL", TOKEN_DB_URL)
    client = redis.Redis.from_url(TOKEN_DB_URL)
    client.delete(TOKENS_KEY)
    yield client
    client.delete(TOKENS_KEY)
    client.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_prints_the_secret_once_and_list_never(state: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    # when a token is created with --json
    code, out, _ = run(
        capsys, "token", "create", "--name", "team-a", "--pool", "p1", "--pool", "p2", "--prefix", "team-a-",
        "--scope", "assign", "--json",
    )  # fmt: skip
    # expect its secret in the answer, its hash (only) in Redis
    assert code == 0
    created = json.loads(out)
    secret = created["token"]
    assert created["name"] == "team-a" and created["scope"] == "assign"
    assert created["pools"] == ["p1", "p2"] and created["prefix"] == "team-a-"
    stored = state.hget(TOKENS_KEY, "team-a")
    assert stored is not None and secret.encode() not in stored and hash_secret(secret).encode() in stored
    # and never again: list (JSON and text) shows scope, not secret
    code, out, _ = run(capsys, "token", "list", "--json")
    assert code == 0 and secret not in out and "sha256" not in out
    assert [t["name"] for t in json.loads(out)["tokens"]] == ["team-a"]
    code, out, _ = run(capsys, "token", "list")
    assert "team-a" in out and "assign on pools p1,p2, projects team-a-*" in out and secret not in out


def test_create_without_json_prints_the_secret_alone_on_a_line(
    state: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "token", "create", "--name", "viewer", "--scope", "read")
    assert code == 0
    secret = out.splitlines()[-1]
    assert secret.startswith("wp_") and "shown once" in err


def test_revoke_deletes_and_a_second_revoke_says_so(state: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "token", "create", "--name", "gone", "--scope", "read")
    assert run(capsys, "token", "revoke", "gone")[0] == 0
    assert state.hget(TOKENS_KEY, "gone") is None
    code, _, err = run(capsys, "token", "revoke", "gone")
    assert code == 1 and "no token named 'gone'" in err


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--name", "x", "--scope", "write"], "scope"),
        (["--name", "bad name", "--scope", "read"], "token name"),
        (["--name", "x", "--scope", "read", "--prefix", "team a"], "prefix"),
        (["--name", "x", "--scope", "read", "--pool", "a{b}"], "pool"),
    ],
)
def test_a_bad_token_request_is_one_line_exit_2_and_nothing_stored(
    state: redis.Redis, capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    code, out, err = run(capsys, "token", "create", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"warmpool: {field} ")
    assert state.hlen(TOKENS_KEY) == 0


def test_a_name_in_use_is_refused(state: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "token", "create", "--name", "dup", "--scope", "read")
    code, _, err = run(capsys, "token", "create", "--name", "dup", "--scope", "admin", "--json")
    assert code == 2 and state.hlen(TOKENS_KEY) == 1
