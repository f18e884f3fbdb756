"""Which optional extra of the package a command needs, and the line that says how to install it.

A base install (``pip install warmpool``) is the client, the CLI and the workers;
the gateway, Flower and the demo need an extra. Their commands check first and
name the extra instead of failing with an ImportError traceback.
"""

from __future__ import annotations

import importlib.util

# extra of pyproject.toml -> the top-level modules it installs that warmpool imports
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "gateway": ("fastapi", "uvicorn", "httpx", "prometheus_client"),
    "flower": ("flower",),
    "demo": ("moto",),
    "plot": ("matplotlib",),
}


def missing_extra(extra: str, *, command: str) -> str | None:
    """The line naming ``extra`` when one of its modules is absent (None when all are installed)."""
    absent = [m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return f"{command} needs {', '.join(absent)}, which a base install leaves out: pip install 'warmpool[{extra}]'"
