"""Shared pytest setup: hypothesis profiles and the tolerance table.

Under CI (the environment sets CI=true) or with HYPOTHESIS_PROFILE=ci the
profile is derandomized, so CI is repeatable; the default `dev` profile
explores new examples on every run. Every failure
hypothesis finds should be pinned as an explicit regression case.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
