"""The package as an operator gets it: a wheel built from the sources, installed in an empty virtual environment.

The build runs pip with build isolation, so it fetches the setuptools that
``[build-system] requires`` asks for (PyPI, like the install of the wheel's
dependencies). The commands run from a directory outside the repository with
a clean environment, so nothing of the working tree can stand in for the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Building and installing take minutes on a loaded machine: the module fixtures count in the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# What the build reads (pyproject's package discovery looks at these only).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "celeryconfig.py", "tasks", "producer", "sandbox")
INSTALL_TIMEOUT_S = 900  # dependencies from PyPI on a loaded 2-core machine


def sh(
    argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    result = sh(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(dist), str(src)],
        cwd=src,
        timeout_s=INSTALL_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = dist.glob("warmpool-*.whl")
    return built


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("venv")
    result = sh([sys.executable, "-m", "venv", str(root / "env")], cwd=root)
    assert result.returncode == 0, result.stderr
    bin_dir = root / "env" / "bin"
    result = sh([str(bin_dir / "python"), "-m", "pip", "install", str(wheel)], cwd=root, timeout_s=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    yield bin_dir


def clean_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """Only PATH (the venv first) and HOME: no PYTHONPATH, no WARMPOOL_* of the caller."""
    return {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **extra}


def test_the_wheel_holds_the_scripts_types_license_and_metadata(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    lua = {f"tasks/state/lua/{p.name}" for p in (REPO / "tasks/state/lua").glob("*.lua")}
    assert lua and lua <= names, sorted(lua - names)
    # the dashboard (GET /ui) is served from the package: every file of producer/gateway/static
    static = {f"producer/gateway/static/{p.name}" for p in (REPO / "producer/gateway/static").iterdir()}
    assert {"producer/gateway/static/dashboard.html", "producer/gateway/static/dashboard.js"} <= static
    assert static <= names, sorted(static - names)
    assert {"tasks/py.typed", "producer/py.typed", "celeryconfig.py"} <= names
    dist_info = f"warmpool-{PROJECT['version']}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    # the dependencies whose internals warmpool patches are capped
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any(r.startswith("Requires-Dist: flower") and "<=" in r for r in requires), requires
    assert any(r.startswith("Requires-Dist: moto") and "<=" in r for r in requires), requires


def test_a_base_install_gives_a_working_client_and_cli(venv: Path, tmp_path: Path) -> None:
    env = clean_env(venv)
    # --version and --help
    result = sh([str(venv / "warmpool"), "--version"], cwd=tmp_path, env=env)
    assert (result.returncode, result.stdout.strip()) == (0, f"warmpool {PROJECT['version']}"), result.stderr
    assert sh([str(venv / "warmpool"), "--help"], cwd=tmp_path, env=env).returncode == 0
    # the client imports without the AWS SDK, and finds its Lua scripts inside the package
    code = (
        "import sys\nfrom producer import PoolClient\nassert 'boto3' not in sys.modules\n"
        "from tasks.state.redis_store import _load_script\nassert 'redis.call' in _load_script('assign.lua')\n"
    )
    result = sh([str(venv / "python"), "-c", code], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    # a program importing the gateway without its extra gets an ImportError naming the extra
    result = sh([str(venv / "python"), "-c", "import producer.gateway"], cwd=tmp_path, env=env)
    assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr
    assert "pip install 'warmpool[gateway]'" in result.stderr
    # a status against nothing: pool_unavailable, exit 4 (not a traceback)
    nothing = f"redis://127.0.0.1:{free_port()}"
    env_nothing = clean_env(venv, WARMPOOL_BROKER_URL=f"{nothing}/0", WARMPOOL_RESULT_BACKEND=f"{nothing}/1")
    result = sh([str(venv / "warmpool"), "status", "--json"], cwd=tmp_path, env=env_nothing, timeout_s=180)
    assert result.returncode == 4, result.stdout + result.stderr
    assert json.loads(result.stdout)["code"] == "pool_unavailable"
    # a bad setting: exit 2 with the line
    result = sh([str(venv / "warmpool"), "status"], cwd=tmp_path, env=clean_env(venv, WARMPOOL_IDLE_TARGET="x"))
    assert (result.returncode, result.stderr) == (
        2,
        "warmpool: WARMPOOL_IDLE_TARGET='x': expected an integer from 0 to 10000\n",
    )


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["warmpool", "gateway"], "gateway"),
        (["warmpool", "flower"], "flower"),
        (["warmpool", "demo", "--once"], "demo"),
        (["python", "-m", "producer.flower_app"], "flower"),
        (["python", "-m", "producer.gateway"], "gateway"),
    ],
)
def test_a_command_that_needs_an_extra_names_it(venv: Path, tmp_path: Path, argv: list[str], extra: str) -> None:
    result = sh([str(venv / argv[0]), *argv[1:]], cwd=tmp_path, env=clean_env(venv))
    assert result.returncode == 1, result.stderr
    assert f"pip install 'warmpool[{extra}]'" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_gateway_extra_installs_what_its_commands_need(venv: Path, wheel: Path, tmp_path: Path) -> None:
    # given the base install, when the gateway extra (which brings Flower) is added
    result = sh(
        [str(venv / "python"), "-m", "pip", "install", f"warmpool[gateway] @ {wheel.as_uri()}"],
        cwd=tmp_path,
        timeout_s=INSTALL_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    env = clean_env(venv)
    # expect the gateway and Flower commands to run
    result = sh([str(venv / "warmpool"), "gateway", "--help"], cwd=tmp_path, env=env)
    assert result.returncode == 0 and "--port" in result.stdout, result.stderr
    result = sh([str(venv / "python"), "-m", "producer.gateway", "--help"], cwd=tmp_path, env=env)
    assert result.returncode == 0 and "WARMPOOL_API_TOKEN" in result.stdout, result.stderr
    result = sh([str(venv / "warmpool"), "flower", "--print-command"], cwd=tmp_path, env=env)
    assert result.returncode == 0 and result.stdout.startswith("celery -A tasks flower"), result.stderr
    code = "from producer.flower_app import harden_flower\nassert harden_flower()\n"
    result = sh([str(venv / "python"), "-c", code], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
