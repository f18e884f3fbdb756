"""bench.motoserver's moto patches change how fast moto answers, never what it answers."""

from __future__ import annotations

import pytest

pytest.importorskip("moto")


def test_dispatch_patch_keeps_moto_s_answers() -> None:
    # given moto's own answers
    from moto import backends
    from moto.core import responses
    from moto.ec2.responses import EC2Response

    modules = list(backends.list_of_moto_modules())
    methods = responses.method_names_from_class(EC2Response)
    from bench.motoserver import patch_moto_dispatch

    # when patched
    patch_moto_dispatch()
    # expect the same module list (every time) and the same method names, now cached
    assert list(backends.list_of_moto_modules()) == modules == list(backends.list_of_moto_modules())
    assert "ec2" in modules
    assert responses.method_names_from_class(EC2Response) == methods
    assert responses.method_names_from_class(EC2Response) is responses.method_names_from_class(EC2Response)
