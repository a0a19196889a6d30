"""The plugin manager through real entry points: broken plugins, duplicates, disabling, lookups,
building, ``lrag plugins``, and the example third-party package installed aside."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from lrag_framework import hookimpl
from lrag_framework.interfaces import Retriever
from lrag_framework.plugins import (HOOKS, PluginError, PluginWarning, build_registry,
                                    describe_component, load_plugins, plugins_report)

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "lrag-example-adapter"

OK = """
    from lrag_framework import hookimpl

    @hookimpl
    def register_retrievers(register):
        from lrag_retrievers.exact import ExactParams, build_exact
        register("{name}", build_exact, ExactParams)
"""

BROKEN = {  # entry-point name -> (module source, what the report must say)
    "boom": ("import lrag_no_such_module_xyz\n",
             ["failed to import fake_plugins_boom", "No module named 'lrag_no_such_module_xyz'"]),
    "future": ("LRAG_API_VERSION = 4\n" + textwrap.dedent(OK.format(name="future")),
               ["declares API 4, this lrag-framework speaks 3 (and 1, 2)"]),
    "typo": ("""
        from lrag_framework import hookimpl

        @hookimpl
        def register_retriver(register):
            register("typo", object)
        """, ["unknown hooks 'register_retriver'", "did you mean 'register_retrievers'"]),
    "badargs": ("""
        from lrag_framework import hookimpl

        @hookimpl
        def register_losses(register, device):
            pass
        """, ["cannot be registered", "device"]),
    "nohooks": ("def register_backbones(register):\n    pass\n",
                ["implements none of the hooks", "missing @hookimpl"]),
    "notcallable": ("""
        from lrag_framework import hookimpl

        @hookimpl
        def register_backbones(register):
            register("fine", lambda params: None)
            register("broken_factory", 42)
        """, ["register('broken_factory')", "factory must be callable, got 42",
              "fake_plugins_notcallable.py"]),
    "badmodel": ("""
        from lrag_framework import hookimpl

        @hookimpl
        def register_embedders(register):
            register("e", lambda params: None, dict)
        """, ["params_model must be a pydantic BaseModel subclass"]),
    "badname": ("""
        from lrag_framework import hookimpl

        @hookimpl
        def register_losses(register):
            register("my loss", lambda params: None)
        """, ["'my loss'", "a name is letters, digits"]),
    "twice": ("""
        from lrag_framework import hookimpl

        @hookimpl
        def register_losses(register):
            register("l", lambda params: None)
            register("l", lambda params: None)
        """, ["loss 'l' is registered twice"]),
    "raises": ("""
        from lrag_framework import hookimpl

        @hookimpl
        def register_backbones(register):
            raise RuntimeError("no GPU driver")
        """, ["register_backbones failed: RuntimeError: no GPU driver",
              "fake_plugins_raises.py"]),
}


@pytest.mark.parametrize("plugin", sorted(BROKEN))
def test_broken_plugin_is_reported_and_others_still_load(make_dist, plugin):
    source, says = BROKEN[plugin]
    make_dist("fake-plugins", {plugin: source, "ok": OK.format(name="fake_ok")}, version="2.5")
    registry = load_plugins()
    broken = {b.plugin: b for b in registry.broken}
    assert plugin in broken, registry.broken
    assert (broken[plugin].distribution, broken[plugin].version) == ("fake-plugins", "2.5")
    for fragment in says:
        assert fragment in broken[plugin].reason
    assert registry.pm.get_plugin(plugin) is None  # unregistered, or never registered
    assert registry.lookup("retriever", "fake_ok").plugin == "ok"
    assert registry.lookup("backbone", "tiny").distribution == "lrag-framework"
    assert all(e.plugin != plugin for kind in HOOKS for e in registry.entries(kind))
    report = plugins_report()
    assert f"{plugin} (fake-plugins 2.5):" in report and "fake_ok" in report


def test_load_plugins_is_cached_per_disabled_set(make_dist):
    make_dist("fake-plugins", {"ok": OK.format(name="fake_ok")})
    assert load_plugins() is load_plugins()
    assert load_plugins(["ok"]) is load_plugins(("ok",))
    assert load_plugins(["ok"]) is not load_plugins()
    with pytest.raises(PluginError, match="unknown retriever 'fake_ok'"):
        load_plugins(["ok"]).lookup("retriever", "fake_ok")


def test_duplicates_need_a_qualified_name_or_a_disabled_plugin(make_dist, monkeypatch):
    make_dist("dist-a", {"twin_a": OK.format(name="twin")})
    make_dist("dist-b", {"twin_b": OK.format(name="twin")}, version="0.3")
    registry = load_plugins()
    found = registry.duplicates[("retriever", "twin")]
    assert sorted(e.qualified for e in found) == ["dist-a:twin", "dist-b:twin"]
    with pytest.raises(PluginError) as err:
        registry.lookup("retriever", "twin")
    msg = str(err.value)
    assert "dist-a:twin" in msg and "dist-b:twin" in msg and "disable" in msg
    assert "twin_a" in msg and "twin_b" in msg  # the plugins, by entry-point name
    assert registry.lookup("retriever", "dist-b:twin").plugin == "twin_b"
    assert registry.lookup("retriever", "Dist_A:twin").plugin == "twin_a"  # PEP 503 names
    assert isinstance(registry.build("retriever", "dist-a:twin", {}), Retriever)
    report = json.loads(plugins_report(as_json=True, kind="retriever"))
    assert report["duplicates"] == [{"kind": "retriever", "name": "twin",
                                     "qualified_names": ["dist-a:twin", "dist-b:twin"],
                                     "shadowed": []}]
    assert "duplicate retriever 'twin'" in plugins_report()

    by_arg = load_plugins(disabled=["dist-a"])  # a distribution name
    assert by_arg.lookup("retriever", "twin").distribution == "dist-b"
    assert by_arg.pm.is_blocked("twin_a") and by_arg.disabled == ["twin_a"]
    monkeypatch.setenv("LRAG_DISABLE_PLUGINS", " twin_b , unrelated")  # an entry-point name
    by_env = load_plugins()
    assert by_env.lookup("retriever", "twin").distribution == "dist-a"
    assert not by_env.duplicates
    assert "disabled plugins: twin_b" in plugins_report()


def test_unknown_names_list_what_exists_and_suggest():
    registry = load_plugins()
    with pytest.raises(PluginError) as err:
        registry.lookup("retriever", "exactt")
    assert "available: exact, usearch" in str(err.value)
    assert "Did you mean 'exact'?" in str(err.value)
    with pytest.raises(PluginError, match="unknown retriever 'nope:exact'"):
        registry.lookup("retriever", "nope:exact")
    assert registry.lookup("retriever", "lrag-framework:exact").name == "exact"
    with pytest.raises(PluginError, match="unknown plugin kind 'retreiver'"):
        registry.entries("retreiver")


class FakeParams(BaseModel):
    model_config = {"extra": "forbid"}
    size: int = 1


class NotARetriever:
    def __init__(self, params):
        self.params = params


def exact_retriever():
    from lrag_retrievers.exact import ExactParams, build_exact

    return build_exact(ExactParams())


class FakePlugin:
    """An in-process plugin without an entry point, as ``build_registry`` accepts them."""

    @hookimpl
    def register_retrievers(self, register):
        register("impostor", NotARetriever, FakeParams)
        register("plain", exact_retriever)  # no params model: called without arguments


def test_build_checks_the_interface_and_validates_params():
    registry = build_registry([("fake", FakePlugin(), "local-fakes", "0")])
    with pytest.raises(PluginError) as err:
        registry.build("retriever", "impostor", {"size": 3})
    msg = str(err.value)
    assert all(s in msg for s in ("local-fakes:impostor", "plugin 'fake'", "NotARetriever",
                                  "lrag_framework.interfaces.Retriever"))
    with pytest.raises(ValidationError, match="bogus"):
        registry.build("retriever", "impostor", {"bogus": 1})
    assert registry.params("retriever", "impostor", {"size": 3}) == FakeParams(size=3)
    assert isinstance(registry.build("retriever", "plain", {}), Retriever)  # no params model
    assert registry.params("retriever", "plain", {}) is None
    with pytest.raises(PluginError, match=r"takes no params, got \['size'\]"):
        registry.build("retriever", "plain", {"size": 1})
    builtin = load_plugins()
    with pytest.raises(ValidationError, match="metrc"):
        builtin.build("retriever", "exact", {"metrc": "cos"})
    params = builtin.params("retriever", "exact", {"metric": "ip"})
    assert builtin.params("retriever", "exact", params) is params
    assert isinstance(builtin.build("retriever", "exact", params), Retriever)


def test_plugin_modules_import_without_torch():
    code = ("import sys; from lrag_framework.plugins import load_plugins, plugins_report; "
            "plugins_report(); print(sorted(m for m in ('torch', 'usearch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_example_package_installs_and_is_listed(tmp_path):
    src, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(EXAMPLE, src)  # builds in a copy, so no build/ or egg-info in the repo
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--disable-pip-version-check", "--target", str(site),
                    str(src)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get(
        "PYTHONPATH", "")])}
    env.pop("LRAG_DISABLE_PLUGINS", None)
    out = subprocess.run([sys.executable, "-m", "lrag_framework", "plugins", "--json"],
                         capture_output=True, text=True, check=True, env=env, cwd=tmp_path)
    report = json.loads(out.stdout)
    ours = [c for c in report["components"] if c["distribution"] == "lrag-example-adapter"]
    assert ours == [{"kind": k, "name": n, "qualified_name": f"lrag-example-adapter:{n}",
                     "distribution": "lrag-example-adapter", "version": "0.2.0",
                     "plugin": "example", "api": 3}
                    for k, n in (("backbone", "example_patch"), ("retriever", "example_flat"))]
    assert not [b for b in report["broken"] if b["distribution"] == "lrag-example-adapter"]

    config = {"backbone": {"name": "example_patch"}, "retriever": {"name": "example_flat"},
              "retrieval": {"k": 1, "recency": 1}, "generation": {"num_frames": 12},
              "output": {"root": str(tmp_path / "runs"), "video": False}, "device": "cpu"}
    code = ("import json, sys, lrag_framework; "
            "r = lrag_framework.run(json.loads(sys.argv[1])); "
            "print(list(r.latents['retrieval'].shape))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[1, 12, 3, 16, 16]"


def test_example_package_tests_pass_with_the_kit(tmp_path):
    """The example's own tests (docs/examples/lrag-example-adapter/tests) use
    lrag_framework.testing, as docs/plugins.md shows; they run as its author runs them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(EXAMPLE / "tests")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, check=False)  # its .hypothesis/ stays out of the repo
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 passed" in out.stdout


def test_a_third_party_name_shadowed_by_a_built_in_resolves_to_the_built_in(make_dist):
    make_dist("lrag-lsh", {"lsh": OK.format(name="exact")})
    registry = load_plugins()
    with pytest.warns(PluginWarning, match="'exact' is the built-in lrag-framework:exact; it "
                      "shadows 'lrag-lsh:exact'"):
        assert registry.lookup("retriever", "exact").distribution == "lrag-framework"
    assert registry.lookup("retriever", "lrag-lsh:exact").plugin == "lsh"
    from lrag_framework import load_config

    with pytest.warns(PluginWarning):  # the zero-config run still validates, with the warning
        load_config({})
    text = plugins_report(kind="retriever")
    assert "exact (shadowed)  lrag-lsh" in text
    assert "warning: retriever 'exact' is the built-in lrag-framework:exact; it shadows " \
           "lrag-lsh:exact" in text
    dup = json.loads(plugins_report(as_json=True))["duplicates"]
    assert dup == [{"kind": "retriever", "name": "exact", "shadowed": ["lrag-lsh:exact"],
                    "qualified_names": ["lrag-framework:exact", "lrag-lsh:exact"]}]


def test_disabling_one_component_by_its_qualified_name(make_dist, monkeypatch):
    make_dist("dist-a", {"twin_a": OK.format(name="twin")})
    make_dist("dist-b", {"twin_b": OK.format(name="twin")})
    registry = load_plugins(["Dist_A:twin"])
    assert registry.lookup("retriever", "twin").distribution == "dist-b"
    assert not registry.disabled and registry.pm.get_plugin("twin_a") is not None
    with pytest.raises(PluginError, match="'dist-a:twin' is not available: component "
                       "dist-a:twin is disabled"):
        registry.lookup("retriever", "dist-a:twin")
    monkeypatch.setenv("LRAG_DISABLE_PLUGINS", "dist-b:twin,dist-a:twin")
    with pytest.raises(PluginError, match="'twin' is not available: component dist-.:twin is "
                       "disabled"):
        load_plugins().lookup("retriever", "twin")
    assert "disabled components: retriever dist-a:twin, retriever dist-b:twin" in plugins_report()


def test_a_component_of_a_disabled_plugin_is_said_to_be_disabled(make_dist):
    make_dist("lrag-lsh", {"lsh": OK.format(name="lsh"), "other": OK.format(name="fake_other")})
    registry = load_plugins(["lsh"])
    with pytest.raises(PluginError, match=r"retriever 'lsh' is not available: plugin 'lsh' "
                       r"\(lrag-lsh 1.0\) is disabled"):
        registry.lookup("retriever", "lsh")
    with pytest.raises(PluginError, match=r"unknown retriever 'lsh2'.*disabled plugins, whose "
                       r"components are not loaded: lsh"):
        registry.lookup("retriever", "lsh2")
    with pytest.raises(PluginError, match="plugin 'lsh' .* is disabled"):
        load_plugins(["lrag-lsh"]).lookup("retriever", "lrag-lsh:anything")


def test_a_plugin_for_api_1_loads_with_a_deprecation_warning(make_dist):
    make_dist("old-plugins", {"old": "LRAG_API_VERSION = 1\n" + textwrap.dedent(
        OK.format(name="old_exact"))})
    registry = load_plugins()
    assert not registry.broken and registry.deprecated_api() == ["old"]
    with pytest.warns(PluginWarning, match="written for plugin API 1"):
        registry.build("retriever", "old_exact", {})
    assert "warning: plugin 'old' is written for a deprecated plugin API" in plugins_report()


def test_a_plugin_for_api_2_loads_silently(make_dist):  # API 3 only adds
    make_dist("api2-plugins", {"two": "LRAG_API_VERSION = 2\n" + textwrap.dedent(
        OK.format(name="two_exact"))})
    registry = load_plugins()
    assert not registry.broken and registry.deprecated_api() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.build("retriever", "two_exact", {})


def test_built_components_are_named_by_their_registration():
    r = load_plugins().build("retriever", "exact", {})
    assert describe_component(r, "retriever").startswith("retriever 'exact' (lrag-framework ")
    from lrag_retrievers.exact_retriever import ExactRetriever

    assert "ExactRetriever (not built through the registry)" in describe_component(
        ExactRetriever(), "retriever")


def test_a_closed_pipe_ends_lrag_plugins_quietly():
    out = subprocess.run(f"{sys.executable} -m lrag_framework plugins | true", shell=True,
                         capture_output=True, text=True, check=False)
    assert out.stderr == "", out.stderr
