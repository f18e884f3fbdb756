"""The layers stay layered: the pool model imports no I/O library, directly or through the project.

Each check runs in a fresh interpreter, so what another test imported cannot
hide (or fake) a dependency.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import tasks.pool

IO_LIBRARIES = ("redis", "boto3", "botocore", "celery", "kombu")


def _modules_of(package: str) -> list[str]:
    pkg = __import__(package, fromlist=["__path__"])
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]


def _loaded_after_import(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("module", _modules_of("tasks.pool"))
def test_the_pool_model_imports_no_io_library(module: str) -> None:
    # given one module of the pool-model package, when imported alone
    loaded = _loaded_after_import([module])
    # expect none of the I/O libraries anywhere in the interpreter
    assert not loaded & set(IO_LIBRARIES), f"{module} pulls in {sorted(loaded & set(IO_LIBRARIES))}"


def test_the_shared_contract_modules_import_no_io_library() -> None:
    # given the modules producers and workers share
    loaded = _loaded_after_import(["tasks.contract", "tasks.errors", "tasks.config"])
    # expect them to stay pure as well
    assert not loaded & set(IO_LIBRARIES)


def test_the_check_sees_an_io_import() -> None:
    # given a module that does import an I/O library (the Redis adapter)
    loaded = _loaded_after_import(["tasks.state.redis_store"])
    # expect the check to notice it (so the checks above cannot pass vacuously)
    assert "redis" in loaded


def test_every_pool_module_is_checked() -> None:
    assert {"tasks.pool.model", "tasks.pool.service", "tasks.pool.ports"} <= set(_modules_of(tasks.pool.__name__))
