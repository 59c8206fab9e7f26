"""Packaging: the wheel holds exactly our five import packages; the runtime imports without torch."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import zipfile

import pytest

EXPECTED_PACKAGES = {"mrdl", "mrdl_export", "mrdl_runtime", "mrdl_bench", "mrdl_apps"}


@pytest.mark.slow
def test_wheel_holds_exactly_our_packages(tmp_path, repo_root):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(repo_root)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("mrdl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == EXPECTED_PACKAGES
    assert "mrdl/configs/base.json" in names and "mrdl/configs/tiny.json" in names
    assert not any(n.startswith(("tests/", "runtime/cpp")) or "/cpp/" in n and n.endswith(".o") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("mrdl =", "mrdl-export =", "mrdl-bench ="):
        assert script in text


def test_runtime_imports_without_torch(block_torch, repo_root):
    import mrdl_runtime

    modules = [m.name for m in pkgutil.walk_packages(mrdl_runtime.__path__, "mrdl_runtime.")]
    code = block_torch + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in ["mrdl_runtime", *modules]) + \
        "assert 'torch' not in sys.modules\nprint('ok')\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_block_really_blocks_torch(block_torch):
    result = subprocess.run([sys.executable, "-c", block_torch + "import torch"], capture_output=True, text=True)
    assert result.returncode != 0 and "blocked" in result.stderr


def test_python_m_mrdl_apps_is_the_mrdl_command():
    result = subprocess.run([sys.executable, "-m", "mrdl_apps", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: mrdl ")
    assert all(name in result.stdout for name in ("embed-text", "train", "evaluate", "export", "predict", "demo"))
