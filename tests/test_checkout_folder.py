"""The suite runs whatever the checkout folder is called.

ComfyUI custom-node folders are often named ``ComfyUI-posetransfer``. The checkout holds an ``__init__.py`` (it is
the package), and pytest imports it while setting up the tests below it; under a name that is not a Python
identifier that import used to fail, and every test errored at collection.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ONE_TEST = "tests/test_geometry.py::test_normalized_round_trip"


def copy_checkout(dest: Path) -> None:
    """The tracked files (or, outside git, the tree without environments and outputs) into ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        for name in filter(None, listed.stdout.split("\0")):
            src = ROOT / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:
        shutil.copytree(ROOT, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".venv*", ".git", "outputs", "__pycache__"))


@pytest.mark.parametrize("folder", ["ComfyUI-posetransfer", "posetransfer 2"])
def test_suite_collects_and_runs_in_any_folder(tmp_path, folder):
    dest = tmp_path / folder
    dest.mkdir()
    copy_checkout(dest)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", ONE_TEST],
                         cwd=dest, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout and "error" not in out.stdout.lower()
