"""Layout rules: the core never imports a built-in plugin, every built-in plugin module is an
entry point, and the installed project provides no generic top-level import names."""
import ast
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PLUGIN_PACKAGES = {"lrag_adapters", "lrag_retrievers", "lrag_embedders", "lrag_losses"}
PLUGIN_FOLDERS = ("adapters", "retrievers", "losses")
GENERIC = ("adapters", "retrievers", "embedders", "losses", "lrag")


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (anywhere in it, including inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def has_hookimpl(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if (getattr(target, "id", None) or getattr(target, "attr", None)) == "hookimpl":
                    return True
    return False


def test_core_never_imports_a_builtin_plugin():
    core = sorted((ROOT / "lrag_framework").rglob("*.py"))
    assert len(core) > 5
    offenders = {f"{p.relative_to(ROOT)} imports {m}" for p in core for m in imported_modules(p)
                 if m.split(".")[0] in PLUGIN_PACKAGES}
    assert not offenders


def test_every_hookimpl_module_is_an_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["entry-points"]["lrag_framework"].values())
    modules = {}
    for folder in PLUGIN_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if has_hookimpl(path):
                rel = path.relative_to(ROOT / folder).with_suffix("")
                modules[".".join(rel.parts)] = path
    assert "lrag_adapters.tiny.plugin" in modules and "lrag_retrievers.exact" in modules
    assert not sorted(set(modules) - declared), "add them to [project.entry-points.lrag_framework]"


def installed_distribution():
    """The project's installed metadata, not the egg-info a build leaves in the tree (which
    ``python -m pytest`` finds first, through the working directory on ``sys.path``)."""
    for dist in importlib.metadata.distributions(name="lrag-framework"):
        if Path(dist.locate_file("")).resolve() != ROOT.resolve():
            return dist
    pytest.skip("lrag-framework is not installed (only its build metadata is in the tree)")


def test_installed_project_has_no_generic_top_level_names():
    dist = installed_distribution()
    top_level = set((dist.read_text("top_level.txt") or "").split())
    assert "lrag_framework" in top_level and not top_level & set(GENERIC)
    assert not {f.parts[0] for f in dist.files or []} & set(GENERIC)  # what a wheel installed
    # What an isolated interpreter outside the repo can import (no cwd, no PYTHONPATH):
    code = ("import importlib.util, json, sys; "
            "print(json.dumps({n: (s := importlib.util.find_spec(n)) and "
            "(s.origin or str(list(s.submodule_search_locations))) for n in sys.argv[1:]}))")
    names = [*GENERIC, *sorted(PLUGIN_PACKAGES)]
    out = subprocess.run([sys.executable, "-I", "-c", code, *names], capture_output=True,
                         text=True, check=True, cwd="/")
    found = json.loads(out.stdout)
    assert all(found[n] for n in PLUGIN_PACKAGES), found
    assert not [n for n in GENERIC if found[n] and str(ROOT) in found[n]], found
