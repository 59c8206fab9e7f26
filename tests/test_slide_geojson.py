"""GeoJSONWriter: streamed connected components of a class mask as QuPath-ready GeoJSON polygons.

The reference is a plain flood fill (4-connectivity, one class at a time); a polygon matches its
component when its area equals the pixel count and it contains every one of the pixels' centres
(its vertices lie on pixel corners, so it is then exactly those pixels).
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import deque

import numpy as np
import pytest

shapely = pytest.importorskip("shapely", reason="GeoJSON output needs the slide extra (shapely)")

from mrdl_runtime.slide_geojson import GeoJSONWriter  # noqa: E402

CLASS_NAMES = ["background", "nucleus", "stroma", "tumour"]


def reference_components(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class, (n, 2) array of (y, x)) for each 4-connected component of one class, by flood fill."""
    seen = np.zeros(mask.shape, bool)
    found = []
    height, width = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        label, pixels, queue = mask[y, x], [], deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            pixels.append((cy, cx))
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and not seen[ny, nx] and mask[ny, nx] == label:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append((int(label), np.array(pixels)))
    return found


def write(path, mask: np.ndarray, band_heights, *, scale: float = 1.0, **options) -> tuple[int, dict]:
    writer = GeoJSONWriter(path, width=mask.shape[1], height=mask.shape[0], scale=scale,
                           class_names=CLASS_NAMES, **options)
    y = 0
    for h in band_heights:
        writer.add_band(y, mask[y:y + h])
        y += h
    count = writer.close()
    opener = gzip.open if options.get("gzip") else open
    with opener(path, "rt") as file:
        return count, json.load(file)


def random_bands(rng, height: int) -> list[int]:
    heights, left = [], height
    while left:
        heights.append(int(min(left, rng.integers(1, 12))))
        left -= heights[-1]
    return heights


def random_mask(rng, shape, density: float, n_classes: int) -> np.ndarray:
    labels = rng.integers(1, n_classes + 1, shape).astype(np.uint8)
    return np.where(rng.random(shape) < density, labels, 0).astype(np.uint8)


def features_as_set(collection: dict) -> set:
    return {(f["properties"]["classification"]["name"],
             shapely.normalize(shapely.geometry.shape(f["geometry"])).wkb) for f in collection["features"]}


@pytest.mark.parametrize("seed,density,n_classes", [(0, 0.45, 1), (1, 0.6, 3), (2, 0.3, 2), (3, 0.8, 1)])
def test_bands_of_any_height_give_the_components_of_the_whole_mask(tmp_path, seed, density, n_classes):
    rng = np.random.default_rng(seed)
    mask = random_mask(rng, (61, 47), density, n_classes)
    scale = 4.0
    count, whole = write(tmp_path / "whole.geojson", mask, [len(mask)], scale=scale)
    banded_count, banded = write(tmp_path / "banded.geojson", mask, random_bands(rng, len(mask)), scale=scale)
    rows_count, rows = write(tmp_path / "rows.geojson", mask, [1] * len(mask), scale=scale)
    assert features_as_set(banded) == features_as_set(whole) == features_as_set(rows)

    reference = reference_components(mask)
    assert count == banded_count == rows_count == len(whole["features"]) == len(reference)
    component_at = np.full(mask.shape, -1)
    for index, (_, pixels) in enumerate(reference):
        component_at[pixels[:, 0], pixels[:, 1]] = index
    for feature in banded["features"]:
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.is_valid, shapely.is_valid_reason(geometry)
        assert geometry.geom_type == "Polygon"
        corners = np.asarray(geometry.exterior.coords) / scale
        top = corners[corners[:, 1] == corners[:, 1].min()]
        label, pixels = reference[component_at[int(top[:, 1].min()), int(top[:, 0].min())]]  # pixel under the top-left corner
        assert feature["properties"]["classification"]["name"] == CLASS_NAMES[label]
        assert geometry.area == pytest.approx(len(pixels) * scale ** 2)
        assert feature["properties"]["measurements"]["Mask pixels"] == len(pixels)
        assert shapely.contains_xy(geometry, (pixels[:, 1] + 0.5) * scale, (pixels[:, 0] + 0.5) * scale).all()
        # level-0 coordinates: the bounds are the component's pixel box times the scale
        low, high = pixels.min(axis=0), pixels.max(axis=0) + 1
        assert geometry.bounds == (low[1] * scale, low[0] * scale, high[1] * scale, high[0] * scale)


def test_component_spanning_every_band_is_one_object_with_its_hole(tmp_path):
    mask = np.zeros((40, 30), np.uint8)
    mask[2:38, 3] = 1  # a left stem through every band
    mask[37, 3:25] = 1  # a bottom bar that joins the two stems only in the last band
    mask[2:38, 24] = 1  # a right stem
    mask[10:20, 10:18] = 1
    mask[13:16, 12:15] = 0  # a hole in a separate square
    count, collection = write(tmp_path / "u.geojson", mask, [1] * 40, scale=2.0)
    assert count == 2
    geometries = sorted((shapely.geometry.shape(f["geometry"]) for f in collection["features"]), key=lambda g: g.area)
    square, u_shape = geometries
    assert u_shape.area == (36 + 36 + 20) * 4 and u_shape.bounds == (6, 4, 50, 76)
    assert len(square.interiors) == 1 and square.area == (80 - 9) * 4


def test_object_whose_arms_join_different_objects_stays_one(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[0:10, 0] = 1  # object A, opened first
    mask[1, 2:9] = mask[1:10, 2] = mask[1:10, 8] = 1  # object B: two arms below one bar
    mask[6, 0:3] = 1  # joins A to B's left arm only, in the second band
    count, collection = write(tmp_path / "arms.geojson", mask, [4, 6])
    assert count == len(reference_components(mask)) == 1
    assert shapely.geometry.shape(collection["features"][0]["geometry"]).area == (mask > 0).sum()


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_and_bands_match_the_reference_count(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    mask = random_mask(rng, tuple(rng.integers(1, 90, 2)), rng.uniform(0.1, 0.95), int(rng.integers(1, 4)))
    count, collection = write(tmp_path / "objects.geojson", mask, random_bands(rng, len(mask)), scale=0.5)
    geometries = [shapely.geometry.shape(f["geometry"]) for f in collection["features"]]
    assert count == len(reference_components(mask))
    assert all(g.is_valid for g in geometries)
    assert sum(g.area for g in geometries) == pytest.approx((mask > 0).sum() * 0.25)


def test_diagonal_pinches_give_valid_polygons(tmp_path):
    mask = np.zeros((9, 9), np.uint8)
    mask[1:8, 1] = mask[1:8, 7] = mask[1, 1:8] = mask[7, 1:8] = 1  # a frame ...
    mask[2, 2] = mask[3, 3] = mask[4, 4] = mask[3, 5] = mask[2, 6] = 1  # ... with a V inside touching it at corners
    mask[4, 3] = 1
    count, collection = write(tmp_path / "pinch.geojson", mask, [2, 3, 4])
    assert count == len(reference_components(mask))
    for feature in collection["features"]:
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.is_valid, shapely.is_valid_reason(geometry)


def test_empty_mask_is_an_empty_feature_collection(tmp_path):
    count, collection = write(tmp_path / "empty.geojson", np.zeros((20, 10), np.uint8), [7, 13])
    assert count == 0 and collection == {"type": "FeatureCollection", "features": []}


def test_gzip_and_qupath_keys(tmp_path):
    mask = random_mask(np.random.default_rng(5), (30, 30), 0.5, 2)
    count, collection = write(tmp_path / "objects.geojson.gz", mask, [10, 20], gzip=True, object_type="annotation")
    assert count == len(collection["features"]) > 0
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "annotation"
        classification = feature["properties"]["classification"]
        assert classification["name"] in CLASS_NAMES[1:3]
        assert len(classification["color"]) == 3 and all(0 <= c <= 255 for c in classification["color"])


def test_scale_per_axis_maps_rows_and_columns_each_by_their_own_ratio(tmp_path):
    """scale=(y, x): mask rows are 2 level-0 rows, columns 4 level-0 columns (non-square slide pixels)."""
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 3:9] = 1
    count, collection = write(tmp_path / "aniso.geojson", mask, [4, 6], scale=(2.0, 4.0))
    polygon = shapely.geometry.shape(collection["features"][0]["geometry"])
    assert count == 1 and polygon.bounds == (12.0, 4.0, 36.0, 10.0)  # minx, miny, maxx, maxy
    assert collection["features"][0]["properties"]["measurements"]["Area px^2"] == 18 * 2.0 * 4.0 == polygon.area
    with pytest.raises(ValueError, match=r"scale must be positive"):
        GeoJSONWriter(tmp_path / "bad.geojson", width=4, height=4, scale=(1.0, 0.0), class_names=CLASS_NAMES)


def test_min_area_drops_small_objects(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[1, 1] = 1
    mask[4:7, 4:7] = 2
    count, collection = write(tmp_path / "big.geojson", mask, [10], min_area_px=2)
    assert count == 1 and collection["features"][0]["properties"]["classification"]["name"] == "stroma"


def test_nothing_is_written_until_close_and_bad_input_is_refused(tmp_path):
    path = tmp_path / "objects.geojson"
    writer = GeoJSONWriter(path, width=8, height=4, scale=1.0, class_names=CLASS_NAMES)
    with pytest.raises(ValueError, match="uint8"):
        writer.add_band(0, np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError, match=r"\(rows, 8\)"):
        writer.add_band(0, np.zeros((2, 7), np.uint8))
    with pytest.raises(ValueError, match="consecutive"):
        writer.add_band(1, np.zeros((2, 8), np.uint8))
    with pytest.raises(ValueError, match="no class name"):
        writer.add_band(0, np.full((2, 8), 9, np.uint8))
    writer.add_band(0, np.ones((2, 8), np.uint8))
    assert not path.exists()
    with pytest.raises(ValueError, match="2 of 4 mask rows"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="background"):
        GeoJSONWriter(path, width=8, height=4, scale=1.0, class_names=["nucleus"])


def test_missing_shapely_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "shapely", None)
    with pytest.raises(ImportError, match=r"mrdl\[slide\]"):
        GeoJSONWriter(tmp_path / "x.geojson", width=4, height=4, scale=1.0, class_names=CLASS_NAMES)
