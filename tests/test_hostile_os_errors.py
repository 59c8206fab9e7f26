"""Operating-system errors and single bad inputs (issue 21, item 2).

* Every command turns an OSError (no space, read-only, permission, name too long) into one line
  and exit status 1 (mrdl_apps.errors), never a traceback: ``mrdl-export``, ``mrdl predict``,
  ``mrdl train``, ``mrdl triton-repo``. Root ignores permissions, so a full disk and a read-only
  folder are simulated by making ``os.replace`` / ``os.rename`` (every atomic write's last step) raise
  the errno.
* ``mrdl predict``'s per-image boundary records whatever one input causes (an OverflowError-raising
  TIFF, a 254-character file name) and goes on: the later good images are written.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

FAILURES = {"ENOSPC": (errno.ENOSPC, "No space left on device", "no space left on device (ENOSPC); free some space"),
            "EROFS": (errno.EROFS, "Read-only file system", "read-only file system (EROFS)"),
            "EACCES": (errno.EACCES, "Permission denied", "permission denied (EACCES); check the permissions")}


def _failing_replace(monkeypatch, code: int, text: str) -> None:
    def replace(source, target, *args, **kwargs):
        raise OSError(code, text, str(target))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)  # Path.rename: a folder written whole, then renamed into place


def _one_line_error(result, expected: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if "Error" in line or "error" in line]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "Traceback" not in result.output


def test_os_error_line_names_the_file_the_error_and_what_to_do():
    from mrdl_apps.errors import os_error_line

    line = os_error_line(OSError(errno.ENAMETOOLONG, "File name too long", "/out/" + "a" * 300))
    assert line.startswith("cannot use /out/aaa") and "file name too long (ENAMETOOLONG); use a shorter name" in line
    assert "\n" not in os_error_line(OSError(errno.ENOSPC, "No space left on device", "/a\nb"))


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_predict_reports_an_os_error_in_one_line(model_dir, tmp_path, monkeypatch, failure):
    from mrdl_apps.cli import main

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    code, text, expected = FAILURES[failure]
    _failing_replace(monkeypatch, code, text)
    result = CliRunner().invoke(main, ["predict", str(model_dir), str(tmp_path / "a.png"), "--out",
                                       str(tmp_path / "out"), "--no-progress"], catch_exceptions=False)
    _one_line_error(result, expected)


def test_triton_repo_reports_an_os_error_in_one_line(model_dir, tmp_path, monkeypatch):
    pytest.importorskip("tritonclient")
    from mrdl_apps.cli import main

    _failing_replace(monkeypatch, *FAILURES["EROFS"][:2])
    result = CliRunner().invoke(main, ["triton-repo", str(model_dir), "--out", str(tmp_path / "repo")],
                                catch_exceptions=False)
    _one_line_error(result, FAILURES["EROFS"][2])


def test_export_reports_an_os_error_in_one_line(tiny_checkpoint, tmp_path, monkeypatch):
    from mrdl_apps.export import main

    _failing_replace(monkeypatch, *FAILURES["ENOSPC"][:2])
    result = CliRunner().invoke(main, ["--ckpt", str(tiny_checkpoint), "--out", str(tmp_path / "deploy"),
                                       "--parity-images", "1"], catch_exceptions=False)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no space left on device" in result.output.lower(), result.output
    assert not (tmp_path / "deploy").exists()


def test_train_reports_an_os_error_in_one_line(tmp_path, monkeypatch):
    from mrdl_apps.cli import main

    _failing_replace(monkeypatch, *FAILURES["ENOSPC"][:2])
    result = CliRunner().invoke(main, ["train", "--config", "tiny", "--epochs", "1", "--out", str(tmp_path / "run"),
                                       "--batch-size", "8"], catch_exceptions=False)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no space left on device" in result.output.lower(), result.output


def _bigtiff_with_huge_strip_count(path: Path) -> Path:
    """A 12x10 gray BigTIFF whose second strip claims 2**63 bytes (read() raised OverflowError)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostile_tiffs", Path(__file__).parent / "cpp" / "hostile_tiffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name, data, _, _ = next(case for case in module.cases(np.random.default_rng(0)) if case[0] == "bytecount_2_63")
    path.write_bytes(data)
    return path


def test_predict_goes_on_after_any_single_bad_input(model_dir, tmp_path):
    """An OverflowError-raising TIFF, a 254-character file name and an image whose decoding raises an
    unexpected error each stay that image's failure: the good images around them are written."""
    from mrdl_apps.cli import main

    images = tmp_path / "images"
    images.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    long_name = "n" * 250 + ".png"  # 254 characters: legal, but no room for a suffix on the temporary name
    for name in ("a_first.png", long_name, "z_last.png"):
        Image.fromarray(rgb).save(images / name)
    _bigtiff_with_huge_strip_count(images / "m_overflow.tif")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", str(model_dir), str(images), "--out", str(out), "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output  # 1: an image failed
    written = sorted(path.name for path in (out / "masks").iterdir())
    assert written == sorted(["a_first.png", long_name, "z_last.png"]), written
    assert "3 images" in result.output and "m_overflow.tif" in result.output and "is truncated" in result.output


def test_the_per_image_boundary_records_unexpected_errors(model_dir, tmp_path, monkeypatch):
    """Whatever one image raises (here a bug-like ArithmeticError from the decoder) is recorded for that image."""
    from mrdl_runtime import Segmenter, files

    real = files.read_image

    def flaky(path, **kwargs):
        if Path(path).name == "b.png":
            raise ArithmeticError("a decoder bug")
        return real(path, **kwargs)

    monkeypatch.setattr(files, "read_image", flaky)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / name)
    with Segmenter.load(model_dir, backend="onnxruntime-cpu") as segmenter:
        summary = files.predict_files(segmenter, [tmp_path / n for n in ("a.png", "b.png", "c.png")],
                                      tmp_path / "out", progress=False)
    assert summary.n_images == 2 and [failure.path.name for failure in summary.failed] == ["b.png"]
    assert "ArithmeticError: a decoder bug" in summary.failed[0].reason
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["a.png", "c.png"]


def test_interruption_is_not_swallowed_by_the_boundary(model_dir, tmp_path, monkeypatch):
    from mrdl_runtime import Segmenter, files
    from mrdl_runtime.files import PredictInterrupted

    def interrupted(path, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "read_image", interrupted)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "a.png")
    with Segmenter.load(model_dir, backend="onnxruntime-cpu") as segmenter:
        with pytest.raises(PredictInterrupted):
            files.predict_files(segmenter, [tmp_path / "a.png"], tmp_path / "out", progress=False)
