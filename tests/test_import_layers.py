"""Import layers and circles: each package imports only from the layers below it, never from one above, not
even lazily; and no module imports itself through a chain of imports (a circle), not even through a
function-level import.

Layers, lowest first (folder -> import package, read from pyproject.toml's package-dir):

    runtime/ mrdl_runtime  <-  mrdl/ mrdl  <-  export/ mrdl_export  <-  benchmarks/ mrdl_bench  <-  apps/ mrdl_apps

Every ``.py`` file under those folders is parsed with ``ast``; every import counts wherever it is written: at
module level, inside a function (lazy), under ``if TYPE_CHECKING:``, relative (``from ..x import y``) or as
``importlib.import_module("literal")`` / ``__import__("literal")``. Run as a command, the file prints the
package import graph (edges with counts), any upward import and any import circle between modules, for the
working tree or a commit:

    python tests/test_import_layers.py              # the working tree
    python tests/test_import_layers.py --rev REV    # a commit, read with git show (no checkout)
"""

from __future__ import annotations

import argparse
import ast
import collections
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("mrdl_runtime", "mrdl", "mrdl_export", "mrdl_bench", "mrdl_apps")  # lowest first


@dataclass(frozen=True)
class Import:
    path: str  # the importing file, relative to the repository root
    line: int
    importer: str  # the package the file belongs to
    module: str  # the module it imports, absolute

    @property
    def imported(self) -> str:
        return self.module.split(".")[0]

    @property
    def upward(self) -> bool:
        return (self.importer in LAYERS and self.imported in LAYERS
                and LAYERS.index(self.imported) > LAYERS.index(self.importer))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.module}, a higher layer"


def package_folders(pyproject: str) -> dict[str, str]:
    """folder -> import package, from pyproject.toml's ``[tool.setuptools] package-dir``."""
    package_dir = tomllib.loads(pyproject)["tool"]["setuptools"]["package-dir"]
    return {folder: package for package, folder in package_dir.items()}


def _imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a parsed file whose own module name is ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append((node.lineno, node.module or ""))
            else:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)] if node.level - 1 < len(parts) else []
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if name in ("import_module", "__import__") and not node.args[0].value.startswith("."):
                found.append((node.lineno, node.args[0].value))
    return found


def scan_sources(sources: dict[str, str], folders: dict[str, str]) -> tuple[list[Import], collections.Counter]:
    """Every import between our packages in ``sources`` (path -> text); also how many files each package has."""
    imports, files = [], collections.Counter()
    for path, text in sorted(sources.items()):
        folder, *rest = Path(path).parts
        if folder not in folders or not path.endswith(".py"):
            continue
        importer = folders[folder]
        files[importer] += 1
        parts = [importer, *rest[:-1], Path(rest[-1]).stem]
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        for line, name in _imported_modules(ast.parse(text, filename=path), module, is_package):
            if name.split(".")[0] in folders.values() and name.split(".")[0] != importer:
                imports.append(Import(path, line, importer, name))
    return imports, files


def worktree_sources(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(path -> text of every .py file under our package folders, folder -> package) of a working tree."""
    folders = package_folders((root / "pyproject.toml").read_text())
    sources = {str(f.relative_to(root)): f.read_text() for folder in folders for f in (root / folder).rglob("*.py")}
    return sources, folders


def revision_sources(root: Path, rev: str) -> tuple[dict[str, str], dict[str, str]]:
    """The same for a git revision, read with ``git show`` (nothing is checked out)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout

    folders = package_folders(git("show", f"{rev}:pyproject.toml"))
    paths = [p for p in git("ls-tree", "-r", "--name-only", rev, "--", *folders).splitlines() if p.endswith(".py")]
    return {path: git("show", f"{rev}:{path}") for path in paths}, folders


def module_name(path: str, folders: dict[str, str]) -> str | None:
    """The dotted module name of a source file (``export/options.py`` -> ``mrdl_export.options``), or None."""
    folder, *rest = Path(path).parts
    if folder not in folders or not path.endswith(".py") or not rest:
        return None
    parts = [folders[folder], *rest[:-1], Path(rest[-1]).stem]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph(sources: dict[str, str], folders: dict[str, str]) -> dict[str, set[str]]:
    """module -> the modules of ours it imports, wherever the import is written (module level, function, ...).

    ``from package import name`` counts as an import of ``package.name`` when that is a module of ours,
    else of ``package``; ``import a.b.c`` as the longest prefix that is a module of ours. The implicit
    import of a parent package's ``__init__`` is not counted (every module has it), nor an import under
    ``if TYPE_CHECKING:`` (it never runs).
    """
    modules = {name: path for path in sources if (name := module_name(path, folders)) is not None}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(sources[path], filename=path)
        is_package = Path(path).stem == "__init__"
        names = {node.lineno: [alias.name for alias in node.names] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
        type_only = {inner.lineno for node in ast.walk(tree) if isinstance(node, ast.If)
                     and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                     for statement in node.body for inner in ast.walk(statement) if hasattr(inner, "lineno")}
        for line, imported in _imported_modules(tree, name, is_package):
            if line in type_only:
                continue
            submodules = [f"{imported}.{alias}" for alias in names.get(line, ()) if f"{imported}.{alias}" in modules]
            for candidate in submodules or [imported]:
                target = candidate
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def import_circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each set of modules that import one another through a chain (strongly connected, 2 or more), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm, iteratively deep graphs are small here
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(circles)


def graph(imports: list[Import]) -> collections.Counter:
    return collections.Counter((i.importer, i.imported) for i in imports)


def describe(imports: list[Import]) -> str:
    """The package graph, one ``a -> b (count)`` line per edge, then the upward imports by file:line."""
    lines = [f"{a} -> {b} ({n})" for (a, b), n in sorted(graph(imports).items())]
    upward = [str(i) for i in imports if i.upward]
    lines.append(f"upward imports: {len(upward)}" + "".join(f"\n  {line}" for line in upward))
    return "\n".join(lines)


# --- tests -----------------------------------------------------------------------------------------------


def test_every_package_has_a_layer():
    assert set(package_folders((ROOT / "pyproject.toml").read_text()).values()) == set(LAYERS)


def test_no_package_imports_a_higher_layer():
    imports, files = scan_sources(*worktree_sources(ROOT))
    assert all(files[package] > 0 for package in LAYERS), files  # each folder was really read
    assert graph(imports)[("mrdl_apps", "mrdl")] > 0  # and the imports between packages were found
    upward = [str(i) for i in imports if i.upward]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_scanner_finds_planted_upward_imports():
    """A small tree with one upward import of each kind: the scanner names each one, and nothing else."""
    folders = {"runtime": "mrdl_runtime", "mrdl": "mrdl", "export": "mrdl_export", "benchmarks": "mrdl_bench",
               "apps": "mrdl_apps"}
    sources = {
        "runtime/__init__.py": "import numpy\nfrom .files import read\n",
        "runtime/files.py": (
            "from typing import TYPE_CHECKING\n"
            "import importlib\n"
            "if TYPE_CHECKING:\n"
            "    from mrdl.model import MRDL\n"  # line 4
            "def lazy():\n"
            "    import mrdl_export.api as api\n"  # line 6
            "    return importlib.import_module('mrdl_apps.cli')\n"  # line 7
        ),
        "mrdl/__init__.py": "from mrdl_runtime import manifest\n",
        "mrdl/data/dataset.py": "from ..model import MRDL\nfrom . import synthetic\nfrom mrdl_runtime.imaging import x\n",
        "mrdl/train.py": "def f():\n    from mrdl_bench import bench\n",  # line 2
        "export/api.py": "from mrdl.model import MRDL\nfrom mrdl_runtime import manifest\n",
        "benchmarks/bench.py": "x = 1\nfrom mrdl_export import export_model\n__import__('mrdl_apps')\n",  # line 3
        "apps/cli.py": "import mrdl, mrdl_bench.bench, mrdl_export, mrdl_runtime\nfrom mrdl_apps import demo\n",
        "docs/notes.py": "import mrdl_apps\n",  # not a package folder: not scanned
    }
    imports, files = scan_sources(sources, folders)
    assert {(i.path, i.line, i.module) for i in imports if i.upward} == {
        ("runtime/files.py", 4, "mrdl.model"),
        ("runtime/files.py", 6, "mrdl_export.api"),
        ("runtime/files.py", 7, "mrdl_apps.cli"),
        ("mrdl/train.py", 2, "mrdl_bench"),
        ("benchmarks/bench.py", 3, "mrdl_apps"),
    }
    assert graph(imports) == {("mrdl_runtime", "mrdl"): 1, ("mrdl_runtime", "mrdl_export"): 1,
                              ("mrdl_runtime", "mrdl_apps"): 1, ("mrdl", "mrdl_runtime"): 2, ("mrdl", "mrdl_bench"): 1,
                              ("mrdl_export", "mrdl"): 1, ("mrdl_export", "mrdl_runtime"): 1,
                              ("mrdl_bench", "mrdl_export"): 1, ("mrdl_bench", "mrdl_apps"): 1,
                              ("mrdl_apps", "mrdl"): 1, ("mrdl_apps", "mrdl_bench"): 1, ("mrdl_apps", "mrdl_export"): 1,
                              ("mrdl_apps", "mrdl_runtime"): 1}
    assert files == {"mrdl_runtime": 2, "mrdl": 3, "mrdl_export": 1, "mrdl_bench": 1, "mrdl_apps": 1}
    assert "runtime/files.py:4: mrdl_runtime imports mrdl.model, a higher layer" in describe(imports)


def test_no_import_circles():
    edges = module_graph(*worktree_sources(ROOT))
    assert "mrdl.model" in edges["mrdl.checkpoint"] and "mrdl.tagged_file" in edges["mrdl.text"]  # edges were found
    assert import_circles(edges) == []


def test_scanner_finds_planted_circles_through_function_level_imports():
    folders = {"mrdl": "mrdl", "export": "mrdl_export"}
    sources = {
        "mrdl/__init__.py": "",
        "mrdl/checkpoint.py": "def load():\n    from .model import MRDL\n",  # function level
        "mrdl/model.py": "def tower():\n    from . import text\n",
        "mrdl/text.py": "from mrdl.checkpoint import shape_mismatches\n",
        "mrdl/config.py": "import mrdl.layers\n",
        "mrdl/layers.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .config import MRDLConfig\n",
        "export/__init__.py": "from .options import ExportOptions\n",  # a package importing its module: no circle
        "export/options.py": "def check():\n    from .manifest import parse\n",
        "export/manifest.py": "from .options import ExportError\n",
    }
    edges = module_graph(sources, folders)
    assert edges["mrdl.model"] == {"mrdl.text"} and edges["mrdl.config"] == {"mrdl.layers"}
    assert import_circles(edges) == [["mrdl.checkpoint", "mrdl.model", "mrdl.text"],
                                     ["mrdl_export.manifest", "mrdl_export.options"]]


def test_predict_and_the_runtime_need_no_torch(tmp_path, block_torch):
    """The bottom layer and ``mrdl predict`` import with torch (and mrdl, which needs it) unimportable."""
    code = block_torch + (
        "import mrdl_runtime, mrdl_apps.predict\n"
        "from click.testing import CliRunner\n"
        "from mrdl_apps.cli import main\n"
        "help = CliRunner().invoke(main, ['predict', '--help'])\n"
        "assert help.exit_code == 0 and 'MODEL_DIR' in help.output, help.output\n"
        f"run = CliRunner().invoke(main, ['predict', {str(tmp_path / 'none')!r}, 'x.png', '--out', "
        f"{str(tmp_path / 'out')!r}])\n"  # runs the command body's imports, then refuses the missing folder
        "assert run.exit_code == 1 and 'does not exist' in run.output, (run.output, run.exception)\n"
        "assert not any(name.split('.')[0] in ('torch', 'mrdl') for name in sys.modules)\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the import graph of our packages and any upward import.")
    parser.add_argument("--rev", help="a git revision to read instead of the working tree")
    parser.add_argument("root", nargs="?", type=Path, default=ROOT, help="repository root [default: this one]")
    options = parser.parse_args()
    found, _ = scan_sources(*(revision_sources(options.root, options.rev) if options.rev
                              else worktree_sources(options.root)))
    circles = import_circles(module_graph(*(revision_sources(options.root, options.rev) if options.rev
                                            else worktree_sources(options.root))))
    print("layers, lowest first: " + " <- ".join(LAYERS))
    print(describe(found))
    print(f"import circles: {len(circles)}" + "".join(f"\n  {' <-> '.join(circle)}" for circle in circles))
    sys.exit(1 if any(i.upward for i in found) or circles else 0)
