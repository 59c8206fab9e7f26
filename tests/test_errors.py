"""Every exception class the project defines derives from ``mrdl_runtime.MrdlError`` (C++: ``mrdl::Error``).

The classes are found by parsing every ``.py`` file of the five packages (``ast``, nothing is
imported): a class is an exception when a base is a builtin exception (not a warning) or another
exception class of the project; each must reach ``MrdlError`` through its bases. Ctrl-C during ``mrdl predict``
(:class:`mrdl_runtime.files.PredictInterrupted`, a ``KeyboardInterrupt``) is the one exception on
purpose: an interruption is not an error, and ``except Exception`` must not swallow it.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("runtime", "mrdl", "export", "benchmarks", "apps")
NOT_ERRORS = {"PredictInterrupted"}  # interruptions, not errors
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()  # warnings are not errors
                      if isinstance(value, type) and issubclass(value, BaseException) and not issubclass(value, Warning)}


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def exception_classes() -> dict[str, tuple[str, list[str]]]:
    """name -> (where, base names) of every class in the packages (the last definition of a name wins)."""
    classes = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "cpp" in path.relative_to(ROOT).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ClassDef):
                    classes[node.name] = (f"{path.relative_to(ROOT)}:{node.lineno}", [_base_name(b) for b in node.bases])
    return classes


def test_every_project_exception_derives_from_mrdl_error():
    classes = exception_classes()

    def reaches(name: str, target, seen=()) -> bool:
        if name in seen or name not in classes:
            return False
        return any(target(base) or reaches(base, target, (*seen, name)) for base in classes[name][1])

    exceptions = [name for name in classes if name != "MrdlError"
                  and reaches(name, lambda base: base in BUILTIN_EXCEPTIONS or base == "MrdlError")]
    assert len(exceptions) >= 25, sorted(exceptions)  # the scan really found the project's exceptions
    outside = [f"{classes[name][0]}: {name}({', '.join(classes[name][1])})" for name in exceptions
               if name not in NOT_ERRORS and not reaches(name, lambda base: base == "MrdlError")]
    assert not outside, "exception classes that do not derive from MrdlError:\n" + "\n".join(outside)


def test_the_base_keeps_builtin_bases():
    """``except ValueError`` (or RuntimeError, FileNotFoundError) callers still catch the project's errors."""
    from mrdl_runtime import BackendUnavailableError, ImageInputError, ManifestError, MrdlError, OptionsError
    from mrdl_runtime.files import InputFilesError, OutputFolderError, PredictInterrupted

    assert issubclass(ManifestError, ValueError) and issubclass(ImageInputError, ValueError)
    assert issubclass(OptionsError, ValueError) and issubclass(InputFilesError, ValueError)
    assert issubclass(BackendUnavailableError, RuntimeError) and issubclass(OutputFolderError, RuntimeError)
    assert all(issubclass(error, MrdlError) for error in (ManifestError, ImageInputError, OptionsError,
                                                          BackendUnavailableError, InputFilesError, OutputFolderError))
    assert not issubclass(PredictInterrupted, Exception)
