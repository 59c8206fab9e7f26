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


# ----------------------------------------------------------------------------- runtime-only installs

# Python source that makes the packages of the train/export/bench extras absent (ModuleNotFoundError,
# as on a machine that ran only `pip install '.[runtime]'`); mrdl's own packages and onnxruntime stay.
RUNTIME_ONLY = """
import sys
class _NotInstalled:
    HIDDEN = {'torch', 'torchvision', 'open_clip', 'safetensors', 'openpyxl', 'matplotlib', 'onnx', 'onnxscript',
              'psutil'}
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NotInstalled())
"""

# (how the command starts, its arguments, the extra it must name)
NEEDS_EXTRA = [
    ("mrdl_apps.export:main", ["--ckpt", "x.safetensors", "--out", "deploy"], "export"),
    ("mrdl_apps.bench:main", ["--ckpt", "x.safetensors", "--model-dir", "deploy"], "bench"),
    ("mrdl_apps.cli:main", ["train", "--config", "tiny"], "train"),
    ("mrdl_apps.cli:main", ["evaluate", "--help"], "train"),
    ("mrdl_apps.cli:main", ["embed-text", "data"], "train"),
    ("mrdl_apps.cli:main", ["export", "--ckpt", "x.safetensors", "--out", "deploy"], "export"),
    ("mrdl_apps.cli:main", ["demo"], "bench"),
]


def _run_runtime_only(entry: str, args: list[str], repo_root) -> subprocess.CompletedProcess:
    module, attribute = entry.split(":")
    code = RUNTIME_ONLY + (f"from {module} import {attribute}\n"
                           f"try:\n    {attribute}(args={args!r}, prog_name='cmd')\n"
                           "finally:\n    assert 'torch' not in sys.modules, 'torch was imported'\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo_root)})


@pytest.mark.parametrize("entry, args, extra", NEEDS_EXTRA, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_runtime_only_command_names_the_extra(entry, args, extra, repo_root):
    result = _run_runtime_only(entry, args, repo_root)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "ModuleNotFoundError" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"needs mrdl's '{extra}' extra" in lines[0] and f"pip install 'mrdl[{extra}]'" in lines[0]
    assert "missing: torch" in lines[0]


@pytest.mark.parametrize("entry, args", [("mrdl_apps.export:main", ["--help"]), ("mrdl_apps.bench:main", ["--help"]),
                                         ("mrdl_apps.cli:main", ["predict", "--help"])])
def test_runtime_only_help_still_works(entry, args, repo_root):
    result = _run_runtime_only(entry, args, repo_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")


def test_runtime_only_mrdl_help_lists_what_each_command_needs(repo_root):
    result = _run_runtime_only("mrdl_apps.cli:main", ["--help"], repo_root)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert "not installed" not in rows["predict"]
    for command in ("train", "evaluate", "embed-text", "export", "demo"):
        assert "not installed" in rows[command], result.stdout


def test_with_the_extras_installed_commands_are_the_real_ones():
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("psutil")
    from mrdl_apps.cli import main
    from mrdl_apps.extras import EXTRA_MODULES, missing_modules
    from click.testing import CliRunner

    assert all(missing_modules(extra) == [] for extra in EXTRA_MODULES)
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0 and "--ckpt" in result.output


def _extra_import_names(extras: dict[str, list[str]], extra: str) -> set[str]:
    """pyproject's requirements of ``extra`` (``mrdl[...]`` expanded) as import names."""
    import re

    import_names = {"open_clip_torch": "open_clip", "onnxruntime-gpu": "onnxruntime"}
    names = set()
    for requirement in extras[extra]:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
        if name == "mrdl":
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                names |= _extra_import_names(extras, inner.strip())
        else:
            names.add(import_names.get(name, name.replace("-", "_")))
    return names


def test_extra_modules_match_pyproject(repo_root):
    tomllib = pytest.importorskip("tomllib")
    from mrdl_apps.extras import EXTRA_MODULES, SUBCOMMAND_EXTRAS

    extras = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRA_MODULES.items():
        assert set(modules) == _extra_import_names(extras, extra), extra
    assert set(SUBCOMMAND_EXTRAS.values()) <= set(EXTRA_MODULES)
