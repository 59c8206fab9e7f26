"""TIFF numbers that cost (issue 21, item 1): the bytes a decoder reads are bounded by what the
pixels need and what the file holds, whatever the strip and tile tags claim.

The crafted files come from tests/cpp/hostile_tiffs.py, which the C++ test data carries too
(``hostile_tiff`` in index.json), so both readers are checked on the same bytes against the same
expected pixels or error words (runtime/VECTORS.md, "TIFF byte bounds").
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

GENERATOR = Path(__file__).resolve().parent / "cpp" / "hostile_tiffs.py"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, list[dict]]:
    spec = importlib.util.spec_from_file_location("hostile_tiffs", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("hostile_tiff")
    return folder, module.write_vectors(folder)


def test_every_crafted_tiff_decodes_as_expected_or_is_refused_with_the_shared_words(hostile):
    from mrdl_runtime.imaging import ImageReadError, read_image

    folder, cases = hostile
    assert {case["name"] for case in cases} >= {"repeated_strips_8mib", "bytecount_2_63", "repeated_tiles",
                                                 "repeated_strips_8mib_deflate", "palette_bytecount_2_63"}
    for case in cases:
        path = folder / case["file"]
        if "error" in case:
            with pytest.raises(ImageReadError) as info:
                read_image(path)
            assert str(path) in str(info.value) and case["error"] in str(info.value), (case["name"], str(info.value))
        else:
            expected = np.fromfile(folder / case["expected"], np.uint8).reshape(case["height"], case["width"], 3)
            np.testing.assert_array_equal(read_image(path), expected, err_msg=case["name"])


def test_repeated_strips_are_read_for_what_their_rows_need(hostile):
    """4096 one-row strips all claiming one 8 MiB block: the old reader read the block 4096 times (32 GiB
    asked; 8.7 GiB peak RSS at a 9 GB address-space limit, then MemoryError). Now each strip is read for
    its 512 bytes: a child process decodes the 8.4 MB file with a peak RSS under 200 MiB."""
    folder, _ = hostile
    # VmHWM is the child's own high-water mark: ru_maxrss keeps the parent's peak across fork + exec, so
    # inside a long pytest run it reports the test process's size, not the decoder's.
    script = ("import re, sys\nfrom mrdl_runtime.imaging import read_image\n"
              "image = read_image(sys.argv[1])\n"
              "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
              "print(image.shape, hwm // 1024)")
    run = subprocess.run([sys.executable, "-c", script, str(folder / "hostile_repeated_strips_8mib.tif")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    shape, peak_mib = run.stdout.rsplit(")", 1)
    assert shape + ")" == "(4096, 512, 3)"
    assert int(peak_mib) < 200, f"peak RSS {peak_mib} MiB"


def test_compressed_bound_admits_incompressible_data(tmp_path):
    """The 4 d + 1024 bound of compressed strips is far from what real codecs produce: noise through
    Pillow's LZW and deflate writers (their worst case) and one-row strips of 16 JPEG-sized bytes decode."""
    from PIL import Image

    from mrdl_runtime.imaging import read_image

    noise = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    for compression in ("tiff_lzw", "tiff_deflate", "packbits", "tiff_adobe_deflate"):
        path = tmp_path / f"{compression}.tif"
        Image.fromarray(noise).save(path, compression=compression)
        np.testing.assert_array_equal(read_image(path), noise, err_msg=compression)
    tiny = tmp_path / "jpeg.tif"
    Image.fromarray(noise[:16, :16]).save(tiny, compression="jpeg", quality=100)
    assert read_image(tiny).shape == (16, 16, 3)


def test_generator_writes_an_index_for_the_cpp_reader(tmp_path):
    """``python tests/cpp/hostile_tiffs.py DIR`` writes the files and hostile_tiff.json (the C++ test's input)."""
    run = subprocess.run([sys.executable, str(GENERATOR), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    index = json.loads((tmp_path / "hostile_tiff.json").read_text())["cases"]
    assert all((tmp_path / case["file"]).stat().st_size == case["bytes"] for case in index)
    assert (tmp_path / "hostile_repeated_strips_8mib.tif").stat().st_size < 8_500_000
