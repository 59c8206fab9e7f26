"""Stream a synthetic slide's ground-truth nuclei mask through GeoJSONWriter: objects, time, peak RSS.

The mask is composed band by band from the crops' ground truth (:func:`mrdl_bench.synthetic_slide.truth_rows`,
the same layout a synthetic slide of these options gets), never whole, so the peak RSS shown is the
writer's (objects still open plus one band) and the crops' cache::

    python -m mrdl_bench.geojson_stream --size 60000 --monuseg PATH/TO/MoNuSeg --out /tmp/objects.geojson
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from mrdl_runtime.slide_geojson import GeoJSONWriter

from .synthetic_slide import SlideOptions, layout, truth_rows


def stream_truth(options: SlideOptions, out: Path, *, band: int = 256, gzip: bool = False) -> tuple[int, float]:
    """Write the ground truth of ``options``' layout as GeoJSON to ``out``; returns (objects, seconds)."""
    placements = layout(options)
    start = time.perf_counter()
    writer = GeoJSONWriter(out, width=options.width, height=options.height, scale=1.0,
                           class_names=["background", "nucleus"], gzip=gzip)
    for y0 in range(0, options.height, band):
        writer.add_band(y0, truth_rows(placements, y0, min(y0 + band, options.height), options.width))
    return writer.close(), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="square mask side in pixels")
    parser.add_argument("--tissue-fraction", type=float, default=0.4)
    parser.add_argument("--monuseg", type=Path, help="MoNuSeg folder; without it the crops are procedural")
    parser.add_argument("--band", type=int, default=256, help="rows per band given to the writer")
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--out", type=Path, help="GeoJSON file (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    options = SlideOptions(width=args.size, height=args.size, tissue_fraction=args.tissue_fraction,
                           monuseg=str(args.monuseg) if args.monuseg else None)
    with tempfile.TemporaryDirectory(prefix="mrdl-geojson-") as temporary:
        out = args.out or Path(temporary) / "objects.geojson"
        objects, seconds = stream_truth(options, out, band=args.band, gzip=args.gzip)
        size = out.stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.size}x{args.size} mask ({'MoNuSeg' if args.monuseg else 'procedural'} truth, "
          f"{args.tissue_fraction:.0%} tissue), bands of {args.band} rows: {objects} objects in {seconds:.1f} s "
          f"({args.size ** 2 / seconds / 1e6:.0f} Mpx/s), {size / 1e6:.0f} MB GeoJSON, peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
