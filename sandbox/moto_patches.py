"""What ``python -m sandbox.moto_server`` may change in moto, inside the server process only.

Two speed patches (same answers, less CPU), for the benchmarks:

* ``patch_tag_lookup``: moto 5.2.5 looks up one instance's tags by scanning
  every tag of the region (``TagBackend.describe_tags`` with a resource-id
  regex), so rendering ``DescribeInstances`` is quadratic: 1,000 instances take
  ~2.7 s, 5,000 take ~45 s. Real AWS is nothing like that, and a
  5,000-instance refresh benchmark would measure moto. The patch replaces that
  lookup with a dictionary read (same result: the resource's tags).
* ``patch_dispatch``: caches two answers moto's server recomputes for every
  request (the list of its service modules, read from the filesystem, and the
  method names of a response class).

One safety wrapper, for the fault suite:

* ``Serialized``: moto's in-memory Auto Scaling model is not thread-safe. Under
  concurrent ``TerminateInstanceInAutoScalingGroup`` / ``SetDesiredCapacity``
  calls (several aws worker threads) two requests rebuild a group's instance
  list from the same old copy; moto then "repairs" the count by terminating
  unprotected instances of its choosing, which looks exactly like warmpool
  terminating assigned machines. Real Auto Scaling is consistent per group, so
  a fault scenario runs moto behind one lock: connections are still served by
  many threads, requests are applied in turn.

Nothing here is imported by the processes that start the server: moto is
patched in the server's own interpreter.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any


def patch_tag_lookup() -> None:
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

    setattr(TaggedEC2Resource, "get_tags", get_tags)  # noqa: B010 (a patch, not an attribute set)


def patch_dispatch() -> None:
    """Compute once what moto's server recomputes on every request.

    moto 5.2.5 lists its own package directory (``os.listdir`` + ``isdir`` of
    every entry, under the dispatcher's global lock) to route each request,
    and introspects the response class (``inspect.getmembers``) to find the
    action's method. Both answers never change while the server runs; together
    they were about a third of moto's CPU per ``CreateTags`` here. Results are
    the same, only cached.
    """
    from moto import backends
    from moto.core import responses, utils

    modules = tuple(backends.list_of_moto_modules())
    setattr(backends, "list_of_moto_modules", lambda: iter(modules))  # noqa: B010 (patches)
    setattr(responses, "method_names_from_class", functools.cache(utils.method_names_from_class))  # noqa: B010


class Serialized:
    """A WSGI app that runs ``app`` under one lock, response body included."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            return list(self.app(environ, start_response))
