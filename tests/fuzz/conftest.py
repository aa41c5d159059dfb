"""Hypothesis profile for the fuzz suite: derandomized and modest by default so CI is stable
and fast; ``PORTCULLIS_FUZZ=deep`` explores with fresh randomness and 25x the examples
(``strategies.examples``)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "portcullis-fuzz",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile(
    "portcullis-fuzz-deep",
    derandomize=False,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile("portcullis-fuzz-deep" if os.environ.get("PORTCULLIS_FUZZ") == "deep" else "portcullis-fuzz")
