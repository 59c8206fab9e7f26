"""What a runtime-only Python install weighs, checked the way a new user installs it (issue 14).

    python benchmarks/install_size.py                 # pip install '.[runtime]' from a fresh clone
    python benchmarks/install_size.py --wheel         # python -m build --wheel, then the wheel[runtime]
    python benchmarks/install_size.py --extra runtime-gpu

Clones the repository's committed HEAD into a temporary folder, creates a fresh virtualenv with
the Python running this script, installs the extra exactly as docs/install.md shows, and
prints the site-packages size (``du``-style, with and without the venv's own pip and setuptools)
and every installed distribution with its size. It then checks what a runtime-only install
promises: ``import mrdl_runtime`` leaves torch unimported, torch is not installed, and
``mrdl-export`` exits 2 with one line naming the extra. Needs the package index (onnxruntime);
takes about half a minute. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_OWN = {"pip", "setuptools"}  # what `python -m venv` puts there before any install

# run inside the new venv: the size of every installed distribution (its RECORD's files, .pyc included)
SIZES = """
import json, os, sys
from importlib import metadata
site = sys.argv[1]
sizes = {}
for dist in metadata.distributions(path=[site]):
    files = (os.path.join(site, str(f)) for f in dist.files or [])
    sizes[f"{dist.metadata['Name']}=={dist.version}"] = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
print(json.dumps(sizes))
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, text=True, capture_output=True, **kwargs)


def tree_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (what ``du --apparent-size`` counts)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", default="runtime", choices=["runtime", "runtime-gpu"],
                        help="the runtime extra to install (default: runtime)")
    parser.add_argument("--wheel", action="store_true", help="build a wheel and install it instead of the tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mrdl-install-") as temp:
        clone, venv = Path(temp) / "mrdl", Path(temp) / "venv"
        run(["git", "clone", "-q", str(ROOT), str(clone)])
        run([sys.executable, "-m", "venv", str(venv)])
        python = venv / "bin" / "python"
        if args.wheel:  # built in a venv of its own, so `build` is not counted
            builder = Path(temp) / "build-venv"
            run([sys.executable, "-m", "venv", str(builder)])
            run([str(builder / "bin" / "python"), "-m", "pip", "install", "-q", "build"])
            run([str(builder / "bin" / "python"), "-m", "build", "--wheel"], cwd=clone)
            wheel = next((clone / "dist").glob("mrdl-*.whl"))
            target = f"dist/{wheel.name}[{args.extra}]"
        else:
            target = f".[{args.extra}]"
        print(f"pip install '{target}'  (in a fresh clone of {ROOT}, fresh venv, {sys.version.split()[0]})")
        run([str(python), "-m", "pip", "install", "-q", target], cwd=clone)
        site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
        sizes = json.loads(run([str(python), "-c", SIZES, str(site)]).stdout)
        own = sum(size for name, size in sizes.items() if name.split("==")[0].lower() in VENV_OWN)
        total = tree_bytes(site)
        blocks = run(["du", "-sm", str(site)]).stdout.split()[0]
        print(f"site-packages: {total / 2**20:.0f} MiB of files ({blocks} MiB on disk, du -sm), "
              f"{(total - own) / 2**20:.0f} MiB without pip and setuptools")
        for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
            print(f"  {size / 2**20:7.1f} MiB  {name}")
        import_check = run([str(python), "-c", "import sys, mrdl_runtime, mrdl_apps.cli; print('torch' in sys.modules)"])
        has_torch = any(name.split("==")[0].lower() == "torch" for name in sizes)
        export = subprocess.run([str(venv / "bin" / "mrdl-export"), "--ckpt", "x.safetensors", "--out", "deploy"],
                                text=True, capture_output=True, env={**os.environ, "PATH": str(venv / "bin")})
        print(f"torch installed: {has_torch}; torch imported by mrdl_runtime: {import_check.stdout.strip()}")
        print(f"mrdl-export: exit {export.returncode}: {export.stderr.strip()}")
        if has_torch or import_check.stdout.strip() != "False" or export.returncode != 2:
            sys.exit("FAILED: a runtime-only install must not pull torch, and mrdl-export must exit 2 naming its extra")


if __name__ == "__main__":
    main()
