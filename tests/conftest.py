"""Shared test setup: hypothesis profiles, a clean plugin environment, fake plugin packages."""
import importlib
import os
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, settings

from lrag_framework.plugins import DISABLE_ENV, clear_plugin_cache

# HYPOTHESIS_PROFILE=thorough (tox -e thorough) runs the property tests with many more examples.
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tests' tensors are small: threads gain nothing, and on the shared 2-core CI machine
    spinning OpenMP threads only wait for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_disabled_plugins(monkeypatch):
    """A developer's LRAG_DISABLE_PLUGINS must not change what the tests see."""
    monkeypatch.delenv(DISABLE_ENV, raising=False)


@pytest.fixture
def make_dist(tmp_path, monkeypatch):
    """Install fake plugin distributions, found through real entry-point metadata.

    ``make_dist("my-dist", {"ep_name": "module source", ...}, version="1.0")`` writes each source
    as a module ``<dist>_<ep_name>`` plus a ``.dist-info`` declaring it in the ``lrag_framework``
    group, in a fresh folder prepended to ``sys.path``; everything is undone after the test.
    """
    modules = []

    def make(dist: str, plugins: dict[str, str], version: str = "1.0") -> None:
        root = tmp_path / f"site-{dist}"
        stem = dist.replace("-", "_")
        info = root / f"{stem}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        points = ["[lrag_framework]"]
        for name, source in plugins.items():
            module = f"{stem}_{name}"
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            points.append(f"{name} = {module}")
            modules.append(module)
        (info / "entry_points.txt").write_text("\n".join(points) + "\n")
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        clear_plugin_cache()

    yield make
    for module in modules:
        sys.modules.pop(module, None)
    clear_plugin_cache()
