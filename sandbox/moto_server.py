"""moto in server mode in a subprocess: the simulated AWS of a local stack."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from sandbox.processes import DUMMY_CREDENTIAL, free_port, popen_child, terminate, wait_until_up


def _http(url: str, *, method: str = "GET", timeout_s: float = 2.0) -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        status: int = response.status
        return status


class MotoServer:
    """moto in server mode, in a subprocess (workers in other processes reach it by URL).

    ``with MotoServer() as moto: ... moto.endpoint_url ...``; ``reset()`` clears
    every simulated resource (``POST /moto-api/reset``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL to give boto3 (``endpoint_url=``) or ``AWS_ENDPOINT_URL``."""
        return f"http://{self.host}:{self.port}"

    def answers(self) -> bool:
        """True when the server answers HTTP."""
        try:
            return _http(self.endpoint_url + "/moto-api/data.json", timeout_s=1.0) == 200
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> MotoServer:
        """Start the server and wait until it answers."""
        if self._proc is not None:
            return self
        argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL, "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL}
        out: IO[Any] | int = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL
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

    def reset(self) -> None:
        """Forget every simulated resource (all services, all regions)."""
        _http(self.endpoint_url + "/moto-api/reset", method="POST", timeout_s=10.0)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._proc is not None:
            terminate(self._proc, timeout_s=5)
            self._proc = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
