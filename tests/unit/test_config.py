"""Settings explain themselves: a bad value of any setting ends every command with one line and exit 2.

The commands run as real subprocesses (the installed ``warmpool`` script,
``celery -A tasks``, ``python -m producer.gateway``), with an environment made
here: only the variables each case sets, on top of a bare PATH/HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from producer.flower_app import Credentials
from producer.gateway.flower_proxy import FlowerProxy
from tasks import config
from tasks.config_values import mask_all, mask_url_password
from tasks.errors import ConfigError

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]

# For every setting, values it must refuse (and what a person might plausibly type).
BAD_VALUES: dict[str, list[str]] = {
    "WARMPOOL_CONFIG": ["/nonexistent/warmpool.toml", "/"],
    "WARMPOOL_SENTINEL_MASTER": ["my master", "a;b", "x/y"],
    "WARMPOOL_ASG_NAME": ["pool-{x}", "a" * 256],
    "WARMPOOL_IDLE_TARGET": ["abc", "-1", "10001", "2.5"],
    "WARMPOOL_REFRESH_SECONDS": ["soon", "0", "nan"],
    "WARMPOOL_BROKER_URL": ["localhost:6379", "redis://host with space"],
    "WARMPOOL_RESULT_BACKEND": ["redis"],
    "WARMPOOL_REDIS_URL": ["amqp://127.0.0.1//", "127.0.0.1:6379"],
    "WARMPOOL_ADDRESS": ["elastic"],
    "AWS_REGION": ["Mars", "us_east_1"],
    "AWS_ENDPOINT_URL": ["ftp://127.0.0.1", "127.0.0.1:5000"],
    "WARMPOOL_VISIBILITY_TIMEOUT_S": ["1", "five"],
    "WARMPOOL_LEASE_SECONDS": ["-5", "forever"],
    "WARMPOOL_READY_URL": ["http://10.0.0.1/healthz", "ftp://{address}/", "http://{address}:{port}/"],
    "WARMPOOL_READY_TIMEOUT_SECONDS": ["-1", "ten"],
    "WARMPOOL_AWS_WORKER_NICE": ["20", "high"],
    "WARMPOOL_POLICY": ["fixd:2", "fixed:-1", "adaptive:goal=1.5", "adaptive:speed=3"],
    "WARMPOOL_WARM_GOAL": ["1", "0.1", "most"],
    "WARMPOOL_IDLE_MAX": ["-1", "lots"],
    "WARMPOOL_SCHEDULES": [
        "not json",
        '{"name": "x"}',
        '[{"name": "a", "cron": "61 8 * * *", "duration_s": 60, "timezone": "UTC", "min_idle": 1}]',
        '[{"name": "a", "cron": "0 8 * * *", "duration_s": 60, "timezone": "Mars/Base", "min_idle": 1}]',
    ],
    "WARMPOOL_SCALE_IN_DELAY_S": ["-1", "later"],
    "WARMPOOL_SCALE_IN_STEP": ["-2", "1.5"],
    "WARMPOOL_PENDING_POLL_S": ["-1", "100"],
    "WARMPOOL_API_TOKEN": ["two words"],
    "WARMPOOL_GATEWAY_HOST": ["not a host", "-bad-"],
    "WARMPOOL_GATEWAY_PORT": ["abc", "0", "70000"],
    "WARMPOOL_GATEWAY_HEADER_TIMEOUT_S": ["0", "99999", "soon"],
    "WARMPOOL_GATEWAY_IDLE_TIMEOUT_S": ["1.5", "0"],
    "WARMPOOL_GATEWAY_MAX_CONNECTIONS": ["-3", "many"],
    "WARMPOOL_GATEWAY_TOKEN_CACHE_S": ["-1", "301", "soon"],
    "WARMPOOL_GATEWAY_RATE_PER_S": ["-1", "fast"],
    "WARMPOOL_GATEWAY_RATE_BURST": ["0", "2.5"],
    "WARMPOOL_FLOWER_URL": ["127.0.0.1:5555"],
    "WARMPOOL_FLOWER_USER": ["ad:min"],
    "WARMPOOL_FLOWER_PASSWORD": ["bell\x07"],
    "WARMPOOL_WEBHOOK_URL": ["ftp://hooks.example/", "hooks.example/x"],
    "WARMPOOL_WEBHOOK_SECRET": ["two words"],
    "WARMPOOL_DRY_RUN": ["yes", "2"],
    "WARMPOOL_ADOPT_HOLD": ["on", "-1"],
}
CASES = [(name, value) for name, values in BAD_VALUES.items() for value in values]
SPECS = {spec.env: spec for _, spec in config.specs()}


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: no WARMPOOL_*/AWS_* of the caller leaks into the command."""
    env = {"PATH": f"{BIN}{os.pathsep}/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def run(argv: list[str], env: dict[str, str], *, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_every_setting_has_bad_values_here() -> None:
    # given the declared settings, expect this table to cover each one (a new setting needs its cases)
    assert {spec.env for _, spec in config.specs()} == set(BAD_VALUES)


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_a_bad_value_ends_the_cli_with_one_line_naming_it(name: str, value: str) -> None:
    # given one setting with a bad value, when `warmpool status` starts
    result = run([str(BIN / "warmpool"), "status"], base_env(**{name: value}))
    # expect exit 2 and one line naming the setting, its value (masked when secret) and what is allowed
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warmpool: {name}="), result.stderr
    assert ": expected " in lines[0]
    assert repr(SPECS[name].shown(value)) in lines[0]
    if SPECS[name].mask is mask_all:
        assert value not in result.stderr
    assert "Traceback" not in result.stderr and not result.stdout


COMMANDS = {
    "help": ["warmpool", "--help"],
    "assign": ["warmpool", "assign", "p1"],
    "release": ["warmpool", "release", "p1"],
    "touch": ["warmpool", "touch", "p1"],
    "status": ["warmpool", "status"],
    "worker": ["warmpool", "worker", "--queue", "pool"],
    "aws-worker": ["warmpool", "worker", "--queue", "aws"],
    "beat": ["warmpool", "beat"],
    "gateway": ["warmpool", "gateway"],
    "flower": ["warmpool", "flower", "--no-auth"],
    "demo": ["warmpool", "demo", "--once"],
    "celery-worker": ["celery", "-A", "tasks", "worker", "-P", "solo"],
    "celery-beat": ["celery", "-A", "tasks", "beat"],
    "gateway-module": ["python", "-m", "producer.gateway"],
    "flower-module": ["python", "-m", "producer.flower_app", "--no-auth"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_checks_the_settings_before_it_starts(command: str) -> None:
    # given a bad pool setting and a bad gateway setting, when any command starts
    argv = COMMANDS[command]
    argv = [str(BIN / argv[0]) if argv[0] != "python" else sys.executable, *argv[1:]]
    result = run(argv, base_env(WARMPOOL_IDLE_TARGET="abc", WARMPOOL_GATEWAY_PORT="http"))
    # expect exit 2, one line per bad setting, nothing started and no traceback
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "warmpool: WARMPOOL_IDLE_TARGET='abc': expected an integer from 0 to 10000",
        "warmpool: WARMPOOL_GATEWAY_PORT='http': expected an integer from 1 to 65535",
    ]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_checks_the_pools_file_before_it_starts(command: str, tmp_path: Path) -> None:
    # given a pools file with a bad key, when any command starts
    pools = tmp_path / "pools.toml"
    pools.write_text('[pools.small]\nasg = "ide-small"\nidle_target = -1\n', encoding="utf-8")
    argv = COMMANDS[command]
    argv = [str(BIN / argv[0]) if argv[0] != "python" else sys.executable, *argv[1:]]
    result = run(argv, base_env(WARMPOOL_CONFIG=str(pools)))
    # expect exit 2, one line naming the table and key, nothing started and no traceback
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"warmpool: {pools}: [pools.small]: idle_target = '-1': expected an integer from 0 to 10000"
    ]


@pytest.mark.parametrize("command", ["assign", "release", "touch", "status"])
def test_json_commands_print_the_config_error_object(command: str) -> None:
    # given a bad setting, when a command runs with --json
    args = [command, "--json"] if command == "status" else [command, "p1", "--json"]
    result = run([str(BIN / "warmpool"), *args], base_env(WARMPOOL_IDLE_TARGET="abc"))
    # expect exit 2 and one JSON failure with code config_error (not pool_unavailable)
    assert result.returncode == 2
    out = json.loads(result.stdout)
    assert out["status"] == "failed" and out["code"] == "config_error"
    assert out["problems"] == ["WARMPOOL_IDLE_TARGET='abc': expected an integer from 0 to 10000"]


def test_config_check_shows_every_setting_its_value_and_source(tmp_path: Path) -> None:
    # given settings from the defaults, the environment, a fallback variable and a secret file
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    env = base_env(
        WARMPOOL_IDLE_TARGET="5",
        AWS_DEFAULT_REGION="eu-west-1",
        WARMPOOL_API_TOKEN_FILE=str(token),
        WARMPOOL_BROKER_URL="redis://:hunter2@broker:6379/0",
    )
    # when `config check --json` runs
    result = run([str(BIN / "warmpool"), "config", "check", "--json"], env)
    # expect exit 0, every setting, sources named, secrets masked
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "ok"
    rows = {row["name"]: row for row in out["settings"]}
    assert set(rows) == set(BAD_VALUES)
    assert rows["WARMPOOL_IDLE_TARGET"] == {
        "name": "WARMPOOL_IDLE_TARGET",
        "value": "5",
        "source": "environment",
        "origin": "WARMPOOL_IDLE_TARGET",
        "secret": False,
    }
    assert rows["WARMPOOL_ASG_NAME"]["source"] == "default" and rows["WARMPOOL_ASG_NAME"]["value"] == "heavrdevs-asg"
    assert rows["AWS_REGION"]["value"] == "eu-west-1" and rows["AWS_REGION"]["origin"] == "AWS_DEFAULT_REGION"
    assert rows["WARMPOOL_API_TOKEN"]["source"] == "file" and rows["WARMPOOL_API_TOKEN"]["value"] == "****"
    assert rows["WARMPOOL_API_TOKEN"]["origin"] == f"WARMPOOL_API_TOKEN_FILE={token}"
    assert rows["WARMPOOL_BROKER_URL"]["value"] == "redis://:****@broker:6379/0"
    assert "s3cret" not in result.stdout and "hunter2" not in result.stdout

    # and the table form says the same for people
    table = run([str(BIN / "warmpool"), "config", "check"], env)
    assert table.returncode == 0 and not table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith("WARMPOOL_API_TOKEN "))
    assert line.split() == ["WARMPOOL_API_TOKEN", "****", f"[WARMPOOL_API_TOKEN_FILE={token}]"]
    assert "s3cret" not in table.stdout and "hunter2" not in table.stdout


def test_config_check_lists_every_problem_and_exits_2() -> None:
    # given two bad settings, when `config check` runs (it must run, unlike the other commands)
    env = base_env(WARMPOOL_ADDRESS="elastic", WARMPOOL_API_TOKEN="two words")
    table = run([str(BIN / "warmpool"), "config", "check"], env)
    as_json = run([str(BIN / "warmpool"), "config", "check", "--json"], env)
    # expect the full table, both problems, exit 2; JSON: the failure object with both
    assert table.returncode == 2 and as_json.returncode == 2
    assert "WARMPOOL_ADDRESS='elastic': expected one of 'public', 'private'" in table.stderr
    assert "WARMPOOL_API_TOKEN='****': expected printable characters without spaces" in table.stderr
    assert "two words" not in table.stdout + table.stderr + as_json.stdout
    assert len(table.stdout.splitlines()) == len(BAD_VALUES)
    out = json.loads(as_json.stdout)
    assert out["code"] == "config_error" and len(out["problems"]) == 2
    assert {r["name"]: r["source"] for r in out["settings"]}["WARMPOOL_ADDRESS"] == "invalid"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:****@h:6379/0"),
        ("amqp://user:pa:ss@h//", "amqp://user:****@h//"),
        ("user:pw@h:6379", "user:****@h:6379"),  # malformed, and still no password shown
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_url_passwords_are_masked(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown


def test_version_and_config_check_run_whatever_the_settings() -> None:
    result = run([str(BIN / "warmpool"), "--version"], base_env(WARMPOOL_IDLE_TARGET="abc"))
    assert result.returncode == 0 and result.stdout.startswith("warmpool ")


# --- secrets from files -------------------------------------------------------------------------


def test_a_secret_comes_from_its_file_stripped(tmp_path: Path) -> None:
    # given a password file with a trailing newline (as `echo` writes it)
    path = tmp_path / "pw"
    path.write_text("  pass word\n")
    # when the settings are read
    settings = config.Settings.from_env({"WARMPOOL_FLOWER_PASSWORD_FILE": str(path), "WARMPOOL_FLOWER_USER": "u"})
    # expect the file's content, stripped, and the consumers to use it
    assert settings.flower_password == "pass word"
    env = {"WARMPOOL_FLOWER_PASSWORD_FILE": str(path), "WARMPOOL_FLOWER_USER": "u"}
    assert Credentials.from_env(env) == Credentials("u", "pass word")
    proxy = FlowerProxy.from_env({**env, "WARMPOOL_FLOWER_URL": "http://127.0.0.1:5555"})
    assert proxy is not None and proxy.password == "pass word"
    assert "pass word" not in repr(settings)


def test_a_secret_and_its_file_both_set_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file")
    env = base_env(WARMPOOL_API_TOKEN="from-env", WARMPOOL_API_TOKEN_FILE=str(path))
    result = run([str(BIN / "warmpool"), "status"], env)
    assert result.returncode == 2
    assert result.stderr == ("warmpool: WARMPOOL_API_TOKEN and WARMPOOL_API_TOKEN_FILE are both set: set one of them\n")


def test_an_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    result = run([str(BIN / "warmpool"), "gateway"], base_env(WARMPOOL_API_TOKEN_FILE=str(missing)))
    assert result.returncode == 2
    assert result.stderr == (
        f"warmpool: WARMPOOL_API_TOKEN_FILE={str(missing)!r}: cannot read the file (No such file or directory)\n"
    )


def test_a_bad_secret_from_a_file_names_the_file_not_the_value(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("two words\n")
    with pytest.raises(ConfigError) as caught:
        config.Settings.from_env({"WARMPOOL_API_TOKEN_FILE": str(path)})
    assert caught.value.problems == (
        f"WARMPOOL_API_TOKEN='****' (from WARMPOOL_API_TOKEN_FILE={path}): "
        "expected printable characters without spaces",
    )


def test_only_secrets_have_files() -> None:
    # given a non-secret setting's *_FILE, expect it to be no setting at all (the value stays the default)
    assert config.Settings.from_env({"WARMPOOL_IDLE_TARGET_FILE": "/etc/passwd"}).idle_target == 2
    assert {spec.file_env for _, spec in config.specs() if spec.file_env} == {
        "WARMPOOL_BROKER_URL_FILE",
        "WARMPOOL_RESULT_BACKEND_FILE",
        "WARMPOOL_REDIS_URL_FILE",
        "WARMPOOL_API_TOKEN_FILE",
        "WARMPOOL_FLOWER_PASSWORD_FILE",
        "WARMPOOL_WEBHOOK_SECRET_FILE",
    }


def test_empty_means_unset_and_values_are_stripped() -> None:
    settings = config.Settings.from_env({"WARMPOOL_IDLE_TARGET": " 7 ", "WARMPOOL_ADDRESS": "", "AWS_REGION": ""})
    assert settings.idle_target == 7 and settings.address.value == "public" and settings.region == "ap-south-1"


def test_the_readme_table_lists_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{name}`" in section for name in BAD_VALUES), [n for n in BAD_VALUES if f"`{n}`" not in section]
