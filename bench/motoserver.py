"""The benchmarks' moto server: moto's own server, with EC2 tag lookups made O(1), run at low CPU priority.

moto 5.2.5 looks up one instance's tags by scanning every tag of the region
(``TagBackend.describe_tags`` with a resource-id regex), so rendering
``DescribeInstances`` is quadratic: 1,000 instances take ~2.7 s, 5,000 take
~45 s. Real AWS is nothing like that, and a 5,000-instance refresh benchmark
would measure moto. ``patch_moto`` replaces that lookup with a dictionary read
(same result: the resource's tags); nothing else of moto changes.

``patch_moto_dispatch`` caches two answers moto's server recomputes for
every request (the list of its service modules, read from the filesystem,
and the method names of a response class).

The server also runs under ``nice``: on this 2-core machine the simulated AWS
shares CPUs with the system under test, while real AWS runs elsewhere. At the
lowest priority it gets only the CPU the measured processes leave idle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sandbox import MotoServer, popen_child, wait_until_up

NICE = 19


def patch_moto() -> None:
    """Make ``TaggedEC2Resource.get_tags`` a dictionary lookup instead of a scan of every tag."""
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_tags(self: Any) -> list[dict[str, str]]:
        rid = getattr(self, "id", None)
        if not rid:
            return []
        tags = self.ec2_backend.tags.get(rid)  # .get: the backend's defaultdict must not grow
        if not tags:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(rid), "")
        return [{"resource_id": rid, "key": k, "value": v, "resource_type": kind} for k, v in tags.items()]

    TaggedEC2Resource.get_tags = get_tags  # type: ignore[method-assign]


def patch_moto_dispatch() -> None:
    """Compute once what moto's server recomputes on every request.

    moto 5.2.5 lists its own package directory (``os.listdir`` + ``isdir`` of
    every entry, under the dispatcher's global lock) to route each request,
    and introspects the response class (``inspect.getmembers``) to find the
    action's method. Both answers never change while the server runs; together
    they were about a third of moto's CPU per ``CreateTags`` here. Results are
    the same, only cached.
    """
    import functools

    from moto import backends
    from moto.core import responses, utils

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: iter(modules)  # type: ignore[assignment]
    responses.method_names_from_class = functools.cache(utils.method_names_from_class)  # type: ignore[assignment]


class BenchMotoServer(MotoServer):
    """``sandbox.MotoServer`` running ``python -m bench.motoserver`` under ``nice``."""

    def __init__(self, *, log_path: Path | None = None, nice: int = NICE) -> None:
        super().__init__(log_path=log_path)
        self.nice = nice

    def start(self) -> BenchMotoServer:
        if self._proc is not None:
            return self
        argv = ["nice", "-n", str(self.nice), sys.executable, "-m", "bench.motoserver", "-H", self.host]
        argv += ["-p", str(self.port)]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        out: Any = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            self._proc = popen_child(argv, env=env, out=out)
        finally:
            if not isinstance(out, int):
                out.close()
        try:
            wait_until_up(self.answers, timeout_s=self.start_timeout_s, what="moto server", proc=self._proc)
        except BaseException:
            self.stop()
            raise
        return self


def main() -> None:
    patch_moto()
    patch_moto_dispatch()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
