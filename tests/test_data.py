"""The synthetic dataset, LViT-layout parsing with every bad-input case, and the augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrdl.data.dataset import (DatasetError, SegmentationDataset, augment, list_samples, read_descriptions,
                               read_mask)
from mrdl.data.preprocess import ImageReadError, preprocess, read_rgb
from mrdl.data.synthetic import synthetic_sample, write_synthetic_dataset


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    return write_synthetic_dataset(tmp_path / "syn", n_train=3, n_val=2, size=32, seed=1)


def test_synthetic_sample_is_deterministic_and_learnable():
    image, mask, text = synthetic_sample(5, size=64, seed=3)
    again = synthetic_sample(5, size=64, seed=3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 1}
    assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1]) and text == again[2]
    assert "nuclei" in text and any(word in text for word in ("upper", "lower", "centre"))
    other = synthetic_sample(6, size=64, seed=3)
    assert not np.array_equal(image, other[0])
    assert not np.array_equal(image, synthetic_sample(5, size=64, seed=4)[0])
    brightness = image.astype(float).mean(axis=2)
    assert brightness[mask == 1].mean() < brightness[mask == 0].mean() - 60  # nuclei are clearly darker


def test_write_synthetic_dataset_layout(dataset_root: Path):
    for split, count in (("Train", 3), ("Val", 2)):
        folder = dataset_root / f"{split}_Folder"
        assert len(list((folder / "img").glob("*.png"))) == count
        masks = sorted((folder / "labelcol").glob("*.png"))
        assert len(masks) == count
        assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}
        descriptions = read_descriptions(folder / f"{split}_text.xlsx")
        assert sorted(descriptions) == [m.name for m in masks]
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_dataset(dataset_root, n_train=1, n_val=1, size=32)
    assert not [p for p in dataset_root.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_dataset_items(dataset_root: Path):
    dataset = SegmentationDataset(dataset_root, "Train", image_size=16)
    assert len(dataset) == 3 and dataset.names[0] == "synthetic_0000.png"
    item = dataset[0]
    assert item["image"].shape == (3, 16, 16) and str(item["image"].dtype) == "torch.float32"
    assert item["mask"].shape == (16, 16) and set(item["mask"].unique().tolist()) <= {0, 1}
    expected = preprocess(read_rgb(dataset.samples[0].image_path), 16)
    assert np.array_equal(item["image"].numpy(), expected)  # the shared preprocessing contract
    assert dataset.descriptions["synthetic_0000.png"] == synthetic_sample(0, size=32, seed=1)[2]


def test_csv_table_and_root_level_table(dataset_root: Path):
    (dataset_root / "Val_Folder" / "Val_text.xlsx").unlink()
    rows = ["Image,Description", "synthetic_0003.png,one", "synthetic_0004.png,\"two, with a comma\""]
    (dataset_root / "Val_text.csv").write_text("\n".join(rows) + "\n")
    samples = list_samples(dataset_root, "Val")
    assert [s.description for s in samples] == ["one", "two, with a comma"]


def test_missing_folder(dataset_root: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="Test_Folder"):
        list_samples(dataset_root, "Test")
    shutil.rmtree(dataset_root / "Train_Folder" / "labelcol")
    with pytest.raises(DatasetError, match="labelcol"):
        list_samples(dataset_root, "Train")
    with pytest.raises(DatasetError, match="does not exist"):
        list_samples(tmp_path / "nowhere", "Train")


def test_image_without_mask_and_mask_without_image(dataset_root: Path):
    (dataset_root / "Train_Folder" / "labelcol" / "synthetic_0001.png").unlink()
    with pytest.raises(DatasetError, match="synthetic_0001.png has no mask"):
        list_samples(dataset_root, "Train")
    (dataset_root / "Train_Folder" / "img" / "synthetic_0001.png").unlink()
    (dataset_root / "Train_Folder" / "img" / "synthetic_0002.png").unlink()
    with pytest.raises(DatasetError, match="synthetic_0002.png has no image"):
        list_samples(dataset_root, "Train")


def test_image_without_description(dataset_root: Path):
    from openpyxl import load_workbook

    path = dataset_root / "Train_Folder" / "Train_text.xlsx"
    book = load_workbook(path)
    book.active.delete_rows(3)  # header is row 1: drops synthetic_0001.png
    book.save(path)
    with pytest.raises(DatasetError, match="synthetic_0001.png has no description"):
        list_samples(dataset_root, "Train")
    assert len(list_samples(dataset_root, "Train", require_text=False)) == 3
    path.unlink()
    with pytest.raises(DatasetError, match="no description table"):
        list_samples(dataset_root, "Train")


def test_bad_table_header(dataset_root: Path):
    (dataset_root / "Val_Folder" / "Val_text.xlsx").unlink()
    (dataset_root / "Val_Folder" / "Val_text.csv").write_text("File,Text\nsynthetic_0003.png,x\n")
    with pytest.raises(DatasetError, match="columns 'Image' and 'Description'"):
        list_samples(dataset_root, "Val")


def test_a_table_naming_an_image_twice_or_two_tables_are_refused(dataset_root: Path):
    table = dataset_root / "Val_Folder" / "Val_text.xlsx"
    rows = read_descriptions(table)
    table.unlink()
    csv = dataset_root / "Val_Folder" / "Val_text.csv"
    name = sorted(rows)[0]
    csv.write_text("Image,Description,,,\n" + "".join(f"{n},{t}\n" for n, t in rows.items()) + f"{name},other text\n")
    with pytest.raises(DatasetError, match=rf"names {name} twice \(rows 2 and 4\); keep one row per image"):
        list_samples(dataset_root, "Val")
    csv.write_text("Image,Description\n" + "".join(f"{n},{t}\n" for n, t in rows.items()))
    assert len(list_samples(dataset_root, "Val")) == 2
    (dataset_root / "Val_text.xlsx").write_bytes(b"")  # a second table at the root
    with pytest.raises(DatasetError, match=r"split Val has 2 description tables .*; keep one"):
        list_samples(dataset_root, "Val")


def test_names_match_whatever_unicode_form_the_files_and_table_use(dataset_root: Path):
    import unicodedata

    folder = dataset_root / "Val_Folder"
    rows = read_descriptions(folder / "Val_text.xlsx")
    (folder / "Val_text.xlsx").unlink()
    prefix = "caf\u00e9_"
    for old in sorted(rows):
        decomposed = unicodedata.normalize("NFD", prefix + old)  # e + combining accent on disk
        for kind in ("img", "labelcol"):
            (folder / kind / old).rename(folder / kind / decomposed)
    composed = {unicodedata.normalize("NFC", prefix + name): text for name, text in rows.items()}  # in the table
    (folder / "Val_text.csv").write_text("Image,Description\n" + "".join(f"{n},{t}\n" for n, t in composed.items()))
    assert sorted(s.description for s in list_samples(dataset_root, "Val")) == sorted(rows.values())


def test_bad_header_lists_the_cells_it_found_not_the_padding(dataset_root: Path):
    (dataset_root / "Val_Folder" / "Val_text.xlsx").unlink()
    (dataset_root / "Val_Folder" / "Val_text.csv").write_text("Image,Text" + "," * 40 + "\nsynthetic_0003.png,x\n")
    with pytest.raises(DatasetError, match=r"first row \(first sheet\), found \['Image', 'Text'\]$"):
        list_samples(dataset_root, "Val")


def test_mask_values(dataset_root: Path):
    path = dataset_root / "Train_Folder" / "labelcol" / "synthetic_0000.png"
    mask = np.asarray(Image.open(path))
    Image.fromarray((mask // 255).astype(np.uint8)).save(path)  # {0,1} is accepted too
    assert np.array_equal(read_mask(path), mask // 255)
    Image.fromarray(np.where(mask > 0, 128, 0).astype(np.uint8)).save(path)
    with pytest.raises(DatasetError, match=r"values \[0, 128\].*expected \{0,255\} or \{0,1\}"):
        SegmentationDataset(dataset_root, "Train", image_size=16)


def test_palette_masks_are_read_by_colour_not_by_index(dataset_root: Path):
    path = dataset_root / "Train_Folder" / "labelcol" / "synthetic_0000.png"
    mask = np.asarray(Image.open(path)) // 255  # {0, 1}
    palette = Image.fromarray((1 - mask).astype(np.uint8), mode="P")  # index 0 = white, index 1 = black
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)
    palette.save(path)
    assert np.array_equal(read_mask(path), mask)  # what the mask shows, not its indices


def test_an_exif_turned_image_needs_a_mask_turned_the_same_way(dataset_root: Path):
    """Images are read turned by their EXIF Orientation; a square one whose mask carries no turn would be
    misaligned without any size mismatch to show it, so the pair is refused."""
    folder = dataset_root / "Train_Folder"
    image = Image.open(folder / "img" / "synthetic_0000.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "img" / "synthetic_0000.png").unlink()
    image.save(folder / "img" / "synthetic_0000.jpg", exif=exif, quality=95)
    with pytest.raises(DatasetError, match=r"synthetic_0000.jpg carries EXIF Orientation 6 and its mask .* 1: "
                                           r"the mask may be drawn on the stored or on the turned pixels"):
        SegmentationDataset(dataset_root, "Train", image_size=16)
    stored = np.asarray(Image.open(folder / "labelcol" / "synthetic_0000.png"))
    (folder / "labelcol" / "synthetic_0000.png").unlink()  # the mask carries the same turn (lossless WebP): read alike
    Image.fromarray(stored).save(folder / "labelcol" / "synthetic_0000.webp", exif=exif, lossless=True)
    assert np.array_equal(read_mask(folder / "labelcol" / "synthetic_0000.webp"), np.rot90(stored // 255, -1))
    SegmentationDataset(dataset_root, "Train", image_size=16, require_text=False)  # (the table names the .png)


def test_unreadable_image(dataset_root: Path):
    (dataset_root / "Train_Folder" / "img" / "synthetic_0002.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="synthetic_0002.png"):
        SegmentationDataset(dataset_root, "Train", image_size=16)


def test_augmentation_keeps_image_and_mask_aligned():
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[3:12, 5:20] = 1
    image = np.repeat((mask * 255)[:, :, None], 3, axis=2)
    kinds = {"flip": 0, "rotate": 0, "none": 0}
    for draw in range(200):
        out_image, out_mask = augment(image, mask, np.random.default_rng(draw))
        if np.array_equal(out_mask, mask):
            kinds["none"] += 1
        elif out_mask.sum() == mask.sum() and np.array_equal(out_image[:, :, 0], out_mask * 255):
            kinds["flip"] += 1  # rot90 / flip: exact permutation of pixels
        else:
            kinds["rotate"] += 1
            agree = ((out_image[:, :, 0] > 127) == out_mask.astype(bool)).mean()
            assert agree > 0.95
    assert 70 < kinds["flip"] < 135 and 25 < kinds["rotate"] < 80  # p = 0.5 and 0.25 (some draws are identities)
    first = augment(image, mask, np.random.default_rng([0, 1, 2]))
    again = augment(image, mask, np.random.default_rng([0, 1, 2]))
    assert np.array_equal(first[0], again[0])


def test_dataset_augmentation_is_seeded_by_epoch(dataset_root: Path):
    dataset = SegmentationDataset(dataset_root, "Train", image_size=16, augment=True, seed=7)
    views = []
    for epoch in (1, 2, 1):
        dataset.set_epoch(epoch)
        views.append(np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))]))
    assert np.array_equal(views[0], views[2])


def test_monuseg_smoke(monuseg_root: Path):
    train = list_samples(monuseg_root, "Train")
    assert len(train) == 24 and all(s.description for s in train)
    val = SegmentationDataset(monuseg_root, "Val", image_size=64)
    assert len(val) == 6
    assert 0.05 < float(val[0]["mask"].float().mean()) < 0.6
