"""The README's shell blocks run as written, in order, on a fresh copy of the repository.

Every ```bash block runs, in one shell session (so the quick start's activated venv carries over
to later blocks), except blocks right after a ``<!-- readme-test: skip (why) -->`` comment. The
copy has no venv, no run directories and no build artefacts: what a new user starts from."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- readme-test: skip[^>]*-->\s*)?```bash\n(.*?)```", re.S)
IGNORE = shutil.ignore_patterns(".git", ".venv", ".tox", "runs", "build", "dist", "*.egg-info",
                                "__pycache__", ".hypothesis", ".pytest_cache", ".whl", ".device",
                                "corpora")


def readme_blocks() -> list[str]:
    return [body for skip, body in BLOCK.findall((ROOT / "README.md").read_text()) if not skip]


def test_readme_has_runnable_blocks():
    blocks = readme_blocks()
    assert blocks and "lrag run" in blocks[0] and ". .venv/bin/activate" in blocks[0]


@pytest.mark.skipif(sys.platform != "linux", reason="the README's commands are for a POSIX shell")
def test_readme_commands_run_as_written(tmp_path):
    copy = tmp_path / "clone"
    shutil.copytree(ROOT, copy, ignore=IGNORE)
    script = "set -euo pipefail\n" + "\n".join(readme_blocks())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON",
                                                                     "TOX", "PIP_USER"))}
    tox_bin = str(Path(sys.executable).parent)  # not the test environment's python
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != tox_bin)
    done = subprocess.run(["bash", "-c", script], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    runs = list((copy / "runs").glob("*-default"))
    assert len(runs) == 1 and (runs[0] / "compare_000.mp4").is_file()
    assert (copy / "runs" / "wan_text_to_video_example").is_dir()
    assert "run directory:" in done.stdout
