"""mrdl.data.sources: which images a --data folder stands for, one rule for mrdl-export and mrdl-bench."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrdl.data.sources import (CALIBRATION_SPLITS, SYNTHETIC, ImageSourceError, image_files, image_folder,
                               load_images)


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def lvit_root(tmp_path: Path) -> Path:
    """An LViT root with Train and Test splits (no Val) and stray images of its own."""
    root = tmp_path / "root"
    _image(root / "Train_Folder" / "img" / "t1.png")
    _image(root / "Test_Folder" / "img" / "b.PNG")
    _image(root / "Test_Folder" / "img" / "a.jpg")
    _image(root / "stray.png")
    return root


def test_a_dataset_root_reads_the_first_split_present(lvit_root: Path):
    assert image_folder(lvit_root) == lvit_root / "Test_Folder" / "img"  # Val, Test, Train: no Val here
    assert [p.name for p in image_files(lvit_root)] == ["a.jpg", "b.PNG"]  # sorted, suffixes in any case
    assert [p.name for p in image_files(lvit_root, splits=CALIBRATION_SPLITS)] == ["t1.png"]


def test_a_plain_folder_reads_its_own_image_files(tmp_path: Path):
    folder = tmp_path / "plain"
    _image(folder / "z.tif")
    _image(folder / "y.bmp")
    (folder / "notes.txt").write_text("not an image")
    (folder / "looks_like.png").mkdir()  # a folder, whatever its name
    _image(folder / "img" / "nested.png")  # sub-folders are not searched
    assert image_folder(folder) == folder
    assert [p.name for p in image_files(folder)] == ["y.bmp", "z.tif"]


def test_no_folder_or_no_images_is_an_error_naming_the_folder(tmp_path: Path, lvit_root: Path):
    with pytest.raises(ImageSourceError, match="does not exist or is not a folder"):
        image_files(tmp_path / "missing")
    empty = lvit_root / "Val_Folder" / "img"
    empty.mkdir(parents=True)  # an empty first split is an error, not a fall-back to the next one
    with pytest.raises(ImageSourceError, match=f"no images .* in {empty}"):
        image_files(lvit_root)
    assert issubclass(ImageSourceError, FileNotFoundError)


def test_load_images_from_a_folder_and_from_the_synthetic_set(lvit_root: Path):
    images = load_images(size=16, data=lvit_root, count=1, keep_raw=True)
    assert images.names == ["a.jpg"] and images.tensors.shape == (1, 3, 16, 16)
    assert images.source == f"{lvit_root / 'Test_Folder' / 'img'} (1 images)"
    assert images.raw[0].shape == (10, 12, 3) and len(images) == 1
    assert load_images(size=16, data=lvit_root).raw is None  # decoded images dropped unless asked for
    synthetic = load_images(size=16, count=2, synthetic_offset=5)
    assert synthetic.source == SYNTHETIC and synthetic.names == ["synthetic_0005", "synthetic_0006"]
    assert np.array_equal(synthetic.tensors[0], load_images(size=16, count=1, synthetic_offset=5).tensors[0])
    with pytest.raises(ValueError, match="at least one image"):
        load_images(size=16, count=0)


def test_export_and_bench_read_the_same_images_for_the_same_data(lvit_root: Path):
    from mrdl_bench.inputs import InputError, load_inputs

    inputs = load_inputs(size=16, data=lvit_root, count=8)
    assert inputs.names == [p.name for p in image_files(lvit_root)]
    assert np.array_equal(inputs.tensors, load_images(size=16, data=lvit_root, count=8).tensors)
    with pytest.raises(InputError, match="does not exist or is not a folder"):
        load_inputs(size=16, data=lvit_root / "missing")
