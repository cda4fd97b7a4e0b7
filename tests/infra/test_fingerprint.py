"""Fingerprints: stable for equal configurations, different for any changed public value."""
from __future__ import annotations

import numpy as np

from infra.fingerprint import fingerprint


class _Component:
    def __init__(self, a=1, b=(1, 2), array=None):
        self.a, self.b, self.array = a, b, np.arange(3) if array is None else array
        self._model = object()  # caches are private and must not change the key


def test_equal_configurations_share_a_fingerprint():
    assert fingerprint(_Component()) == fingerprint(_Component())


def test_any_public_change_changes_the_fingerprint():
    base = fingerprint(_Component())
    assert fingerprint(_Component(a=2)) != base
    assert fingerprint(_Component(b=(1, 3))) != base
    assert fingerprint(_Component(array=np.arange(3) + 1)) != base
    assert fingerprint(_Component(array=np.arange(3, dtype=np.float32))) != base


def test_nested_components_and_order():
    outer = fingerprint(_Component(a=_Component()))
    assert outer == fingerprint(_Component(a=_Component()))
    assert outer != fingerprint(_Component(a=_Component(a=5)))
    assert fingerprint(1, 2) != fingerprint(2, 1)
