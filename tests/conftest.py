"""Shared pytest configuration: deterministic hypothesis profiles.

Two profiles, chosen with the ``OPTZOO_HYPOTHESIS_PROFILE`` environment variable:

* ``default`` (used when the variable is unset): derandomized (the same examples on every
  run and machine), no deadline (first calls include XLA compilation), no example database;
* ``thorough``: the same, with more examples where a test does not fix its own count; the
  property suite (``tests/test_properties.py``) also draws more trees per optimizer::

      OPTZOO_HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest -q -p no:xdist \\
          tests/test_properties.py
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

settings.register_profile("default", **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("OPTZOO_HYPOTHESIS_PROFILE", "default"))
