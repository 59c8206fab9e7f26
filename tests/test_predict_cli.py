"""``mrdl predict``: folders and globs in, PNG masks (0/255) and overlays out, a summary line, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three synthetic PNGs of different sizes (one grayscale) and a text file to be ignored."""
    from mrdl.data.synthetic import synthetic_sample

    folder = tmp_path / "images"
    folder.mkdir()
    for index, size in enumerate((50, 71, 90)):
        image = synthetic_sample(index, size=size, seed=0)[0][:, : size - 7]
        Image.fromarray(image).convert("L" if index == 2 else "RGB").save(folder / f"tile{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _run(*args: str):
    from mrdl_apps.cli import main

    return CliRunner().invoke(main, ["predict", *args], catch_exceptions=False)


def test_predict_folder_writes_masks_overlays_and_summary(model_dir, image_folder, tmp_path):
    from mrdl_runtime import Segmenter

    out = tmp_path / "out"
    result = _run(str(model_dir), str(image_folder), "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "3 images ->" in result.output and "backend onnxruntime-cpu fp32" in result.output
    assert "auto picked onnxruntime-cpu" in result.output
    foreground = 0
    with Segmenter.load(model_dir) as segmenter:
        for path in sorted(image_folder.glob("*.png")):
            original = np.asarray(Image.open(path).convert("RGB"))
            mask = np.asarray(Image.open(out / "masks" / path.name))
            overlay = np.asarray(Image.open(out / "overlays" / path.name))
            assert mask.shape == original.shape[:2] and overlay.shape == original.shape
            assert set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(mask, segmenter.predict(original).mask * 255)
            np.testing.assert_array_equal(overlay[mask == 0], original[mask == 0])
            foreground += int((mask == 255).sum())
            assert (overlay[mask == 255] != original[mask == 255]).any(axis=-1).all()
    assert foreground > 0, "every mask is empty: the overlay colouring was not exercised"
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["tile0.png", "tile1.png", "tile2.png"]


def test_predict_glob_and_single_file(model_dir, image_folder, tmp_path):
    result = _run(str(model_dir), str(image_folder / "tile[01].png"), str(image_folder / "tile2.png"),
                  "--out", str(tmp_path / "out"), "--backend", "onnxruntime-cpu")
    assert result.exit_code == 0, result.output
    assert "3 images ->" in result.output and "asked for by name" in result.output
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 3


@pytest.mark.parametrize(("args", "message"), [
    (["{folder}/*.jpg"], "no files match the pattern"),
    (["{folder}/missing.png"], "is neither a file, a folder nor a glob pattern"),
    (["{folder}/notes.txt"], "cannot read"),
])
def test_bad_inputs(model_dir, image_folder, tmp_path, args, message):
    result = _run(str(model_dir), *[a.format(folder=image_folder) for a in args], "--out", str(tmp_path / "out"))
    assert result.exit_code != 0
    assert message in result.output


def test_an_empty_out_is_refused_not_the_working_directory(model_dir, image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run(str(model_dir), str(image_folder), "--out", "")
    assert result.exit_code == 1 and "--out is empty; give a folder" in result.output
    assert not (tmp_path / "masks").exists() and not (tmp_path / "predict.json").exists()


def test_folders_take_every_format_the_reader_reads(model_dir, image_folder, tmp_path):
    folder = tmp_path / "formats"
    folder.mkdir()
    image = Image.open(next(image_folder.glob("*.png"))).convert("RGB")
    for name in ("w.webp", "g.gif", "b.BMP"):
        image.save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    result = _run(str(model_dir), str(folder), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "3 images ->" in result.output


def test_a_newline_in_a_file_name_cannot_forge_a_summary_line(model_dir, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "bad\nforged: line.png").write_bytes(b"not an image")
    result = _run(str(model_dir), str(folder), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "bad\\nforged: line.png: cannot read" in result.output
    assert not any(line.startswith("forged") for line in result.output.splitlines())


def test_same_stem_twice_is_refused(model_dir, image_folder, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "tile0.png").write_bytes((image_folder / "tile0.png").read_bytes())
    result = _run(str(model_dir), str(image_folder), str(other), "--out", str(tmp_path / "out"))
    assert result.exit_code != 0 and "would both write tile0.png" in result.output


def test_unavailable_backend_and_missing_model(model_dir, image_folder, tmp_path):
    result = _run(str(model_dir), str(image_folder), "--out", str(tmp_path / "out"), "--backend", "tensorrt")
    assert result.exit_code != 0 and "backend tensorrt (fp32) cannot run here" in result.output
    result = _run(str(model_dir), str(image_folder), "--out", str(tmp_path / "out"), "--precision", "int8")
    assert result.exit_code != 0 and "has no int8 ONNX model" in result.output
    result = _run(str(tmp_path / "nowhere"), str(image_folder), "--out", str(tmp_path / "out"))
    assert result.exit_code != 0 and "does not exist; create one with mrdl-export" in result.output
    assert not (tmp_path / "out").exists()
