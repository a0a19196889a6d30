"""How the check functions fail and run their hypothesis properties (no pytest plugin needed)."""
from __future__ import annotations

from hypothesis import HealthCheck, settings


def expect(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O``: the checks are the product, not debug aids."""
    if not condition:
        raise AssertionError(message)


def run_property(test, max_examples: int | None) -> None:
    """Run a ``@given`` test now: ``max_examples`` or the active profile's count, no deadline
    (a plugin's first call may be slow), health checks for slow data generation off."""
    n = settings.default.max_examples if max_examples is None else max_examples
    settings(max_examples=n, deadline=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(test)()
