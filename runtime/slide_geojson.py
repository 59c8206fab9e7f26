"""Stream a whole-slide class mask into GeoJSON objects that QuPath imports.

:class:`GeoJSONWriter` takes the mask in consecutive row bands and never holds it whole. Each band
is cut into row runs (maximal horizontal stretches of one class); runs of the same class that
overlap in adjacent rows are joined by a union-find over the runs (4-connectivity: pixels that
touch only at a corner are separate objects). The last row's runs and their object ids carry into
the next band, so an object crossing band borders is merged once, never cut. An object is finished
when the band's last row holds none of its runs: its runs become unit-height boxes whose union
(GEOS, through shapely) is its polygon, holes kept, in slide level-0 coordinates (mask pixel times
``scale``, per axis: a slide's pixels need not be square, nor its grid round alike on both axes).
Finished objects are appended to the file at once, so memory holds only the objects still open plus
one band.

The file is one ``FeatureCollection``; each feature carries QuPath's ``objectType`` and
``classification`` (name and RGB colour) and ``measurements`` (area in level-0 pixels and in mask
pixels). It is written to a temporary name beside ``path`` and renamed by :meth:`GeoJSONWriter.close`.
"""

from __future__ import annotations

import gzip as gzip_module
import json
from pathlib import Path

import numpy as np

from .atomic import AtomicFile
from .files import OVERLAY_COLOURS

OBJECT_TYPES = ("detection", "annotation")


def _shapely():
    try:
        import shapely
    except ImportError as error:
        raise ImportError("GeoJSON output needs shapely: pip install 'mrdl[slide]'") from error
    return shapely


def band_runs(band: np.ndarray, y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row runs of the non-zero classes of ``band`` (h, W) uint8 whose first row is slide row ``y0``.

    Returns ``(rows, x0, x1, classes)``, each (n,): run ``i`` covers columns ``x0[i]:x1[i]`` of row
    ``rows[i]``, sorted by row then column.
    """
    h, w = band.shape
    changes = np.ones((h, w + 1), dtype=bool)  # changes[:, x]: a run boundary left of column x
    np.not_equal(band[:, 1:], band[:, :-1], out=changes[:, 1:w])
    foreground = band != 0
    start_rows, x0 = np.nonzero(changes[:, :w] & foreground)
    _, x1 = np.nonzero(changes[:, 1:] & foreground)  # the same runs, in the same order
    return (start_rows.astype(np.int64) + y0, x0.astype(np.int64), x1.astype(np.int64) + 1,
            band[start_rows, x0])


def _overlaps(rows: np.ndarray, x0: np.ndarray, x1: np.ndarray, classes: np.ndarray,
              width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (upper, lower) of run indices in adjacent rows that share a column and a class."""
    stride = width + 1  # a run's key row * stride + column orders runs as they are stored
    start_keys, end_keys = rows * stride + x0, rows * stride + x1
    above = (rows - 1) * stride
    first = np.searchsorted(end_keys, above + x0, side="right")  # first run above ending right of x0
    stop = np.searchsorted(start_keys, above + x1, side="left")  # runs above starting left of x1
    counts = np.maximum(stop - first, 0)
    lower = np.repeat(np.arange(len(rows)), counts)
    upper = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    same = classes[upper] == classes[lower]
    return upper[same], lower[same]


def _roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find by hooking and pointer jumping: the smallest node index of each node's component."""
    parent = np.arange(n)
    while True:
        pa, pb = parent[a], parent[b]
        apart = pa != pb
        if not apart.any():
            return parent
        np.minimum.at(parent, np.maximum(pa[apart], pb[apart]), np.minimum(pa[apart], pb[apart]))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


EAST, SOUTH, WEST, NORTH = range(4)  # edge directions on the image grid (y down)


def _boundary_edges(rows, x0, x1, objects):
    """Directed boundary edges of each object's pixels, interior on the right (clockwise on screen).

    Returns ``(sx, sy, ex, ey, direction, object)`` per edge: one west side and one east side per
    run, and the horizontal edges along each grid line ``y`` where row ``y`` and row ``y - 1`` of an
    object differ (a sweep over the run ends: +1/-1 for row ``y``, +2/-2 for row ``y - 1``).
    """
    one = np.ones(len(rows), np.int64)
    ev_object = np.concatenate([objects, objects, objects, objects])
    ev_y = np.concatenate([rows, rows, rows + 1, rows + 1])
    ev_x = np.concatenate([x0, x1, x0, x1])
    ev_step = np.concatenate([one, -one, 2 * one, -2 * one])
    order = np.lexsort((ev_x, ev_y, ev_object))
    ev_object, ev_y, ev_x = ev_object[order], ev_y[order], ev_x[order]
    state = np.cumsum(ev_step[order])  # 1: only row y, 2: only row y - 1 (each grid line sums to 0)
    top = (state[:-1] == 1) & (ev_x[1:] > ev_x[:-1])
    bottom = (state[:-1] == 2) & (ev_x[1:] > ev_x[:-1])
    left, right = ev_x[:-1], ev_x[1:]
    sx = np.concatenate([x0, x1, left[top], right[bottom]])
    sy = np.concatenate([rows + 1, rows, ev_y[:-1][top], ev_y[:-1][bottom]])
    ex = np.concatenate([x0, x1, right[top], left[bottom]])
    ey = np.concatenate([rows, rows + 1, ev_y[:-1][top], ev_y[:-1][bottom]])
    direction = np.concatenate([np.full(len(rows), NORTH), np.full(len(rows), SOUTH),
                                np.full(top.sum(), EAST), np.full(bottom.sum(), WEST)])
    edge_object = np.concatenate([objects, objects, ev_object[:-1][top], ev_object[:-1][bottom]])
    return sx, sy, ex, ey, direction, edge_object


def _successors(sx, sy, ex, ey, direction, objects, width: int) -> np.ndarray:
    """The edge that follows each edge on its ring. Where two rings of an object meet at a corner
    (pixels of the object touching only diagonally there) the ring turns left, away from the
    interior, so that every ring is simple and holes touch the shell at single points (valid OGC)."""
    low, span = min(sy.min(), ey.min()), max(sy.max(), ey.max()) - min(sy.min(), ey.min()) + 1
    if (int(objects.max()) + 1) * int(span) * (width + 1) * 4 >= 2 ** 62:
        raise ValueError("GeoJSONWriter: too many objects finished in one band to index their vertices; "
                         "give thinner bands")

    def vertex(x, y):
        return ((objects * span + (y - low)) * (width + 1) + x) * 4

    out_keys = vertex(sx, sy) + direction
    out_order = np.argsort(out_keys)
    out_keys = out_keys[out_order]
    arrival = vertex(ex, ey)
    first = np.searchsorted(out_keys, arrival)
    crossing = np.searchsorted(out_keys, arrival + 4) - first == 2
    turn_left = arrival[crossing] + (direction[crossing] + 3) % 4
    first[crossing] = np.searchsorted(out_keys, turn_left)
    return out_order[first]


def _ring_order(successor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a permutation made of cycles: each element's cycle (named by its smallest member) and its
    steps to the cycle's end when cut just before that member, by pointer doubling (log2 rounds)."""
    smallest, jump = np.arange(len(successor)), successor
    while True:  # smallest over windows of 1, 2, 4, ... elements; unchanged once a window spans the cycle
        widened = np.minimum(smallest, smallest[jump])
        if np.array_equal(widened, smallest):
            break
        smallest, jump = widened, jump[jump]
    last = successor == smallest
    remaining = (~last).astype(np.int64)
    jump = np.where(last, np.arange(len(successor)), successor)
    while not last[jump].all():
        remaining += remaining[jump]
        jump = jump[jump]
    return smallest, remaining


def object_rings(rows, x0, x1, objects, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polygon rings of objects given as runs (``objects``: 0..m-1, every index present).

    Returns the vertices (k, 2) in mask pixel corners, each vertex's ring (increasing) and each
    ring's object (increasing; an object's shell first, then its holes). Vertices on a straight
    side are dropped; shells are counter-clockwise by the shoelace formula, holes clockwise.
    """
    sx, sy, ex, ey, direction, edge_object = _boundary_edges(rows, x0, x1, objects)
    successor = _successors(sx, sy, ex, ey, direction, edge_object, width)
    ring, remaining = _ring_order(successor)
    corner = direction[np.argsort(successor)] != direction  # the previous edge turns here
    order = np.lexsort((-remaining, ring))
    order = order[corner[order]]
    x, y, ring = sx[order], sy[order], ring[order]
    ring_start = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    ring_end = np.r_[ring_start[1:], len(ring)]
    following = np.arange(1, len(ring) + 1)
    following[ring_end - 1] = ring_start  # each ring's last vertex closes onto its first
    twice_area = np.add.reduceat(x * y[following] - x[following] * y, ring_start)
    ring_object = edge_object[ring[ring_start]]
    ring_rank = np.lexsort((twice_area <= 0, ring_object))  # per object: the shell (area > 0) first
    rank_of_ring = np.empty_like(ring_rank)
    rank_of_ring[ring_rank] = np.arange(len(ring_rank))
    vertex_rank = np.repeat(rank_of_ring, ring_end - ring_start)
    vertex_order = np.argsort(vertex_rank, kind="stable")
    xy = np.stack([x[vertex_order], y[vertex_order]], axis=1)
    return xy, vertex_rank[vertex_order], ring_object[ring_rank]


class GeoJSONWriter:
    """Write the connected components of a class mask, given in row bands, as GeoJSON polygons.

    ``width`` x ``height`` is the mask grid; ``scale`` the level-0 slide pixels per mask pixel, one
    number or ``(y, x)`` (slide height / grid height, slide width / grid width).
    ``class_names[k]`` names mask value ``k`` (entry 0, the background, is never written).
    Objects under ``min_area_px`` mask pixels are dropped. ``object_type`` is QuPath's
    ``"detection"`` (nuclei, cells) or ``"annotation"``. Use as a context manager, or call
    :meth:`close` (which writes the file) or :meth:`abort` (which leaves nothing behind). The file is
    written to a temporary name in ``temporary_folder`` (default: beside ``path``) and renamed on close.
    """

    def __init__(self, path: str | Path, *, width: int, height: int, scale: float | tuple[float, float],
                 class_names: list[str], gzip: bool = False, min_area_px: int = 0, object_type: str = "detection",
                 temporary_folder: str | Path | None = None):
        if width < 1 or height < 1:
            raise ValueError(f"GeoJSONWriter: width and height must be positive, got {width}x{height}")
        scale_yx = (scale, scale) if np.isscalar(scale) else tuple(scale)  # type: ignore[arg-type]
        if len(scale_yx) != 2 or not all(float(value) > 0 for value in scale_yx):
            raise ValueError("GeoJSONWriter: scale must be positive level-0 pixels per mask pixel, one number or "
                             f"(y, x), got {scale!r}")
        if len(class_names) < 2:
            raise ValueError(f"GeoJSONWriter: class_names must name the background (0) and at least one class, "
                             f"got {class_names!r}")
        if object_type not in OBJECT_TYPES:
            raise ValueError(f"GeoJSONWriter: object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
        self._shapely = _shapely()
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.scale = (float(scale_yx[0]), float(scale_yx[1]))  # (y, x)
        self.class_names, self.min_area_px = list(class_names), int(min_area_px)
        self._properties = [self._class_properties(k, object_type) for k in range(len(self.class_names))]
        self._next_row = 0
        self._count = 0
        self._next_id = 0
        self._carried = tuple(np.zeros(0, np.int64) for _ in range(5))  # last row's runs: rows, x0, x1, class, id
        self._open = tuple(np.zeros(0, np.int64) for _ in range(5))  # runs of open objects: rows, x0, x1, class, id
        self._atomic = AtomicFile(self.path, folder=temporary_folder)
        raw = open(self._atomic.temporary, "wb")
        # filename="": the gzip header names no file (not the random temporary name), so reruns give the same bytes
        self._file = gzip_module.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) if gzip else raw
        self._raw = raw
        self._file.write(b'{"type":"FeatureCollection","features":[')

    def _class_properties(self, k: int, object_type: str) -> str:
        colour = [int(c) for c in OVERLAY_COLOURS[(k - 1) % len(OVERLAY_COLOURS)]]
        body = json.dumps({"objectType": object_type, "classification": {"name": self.class_names[k], "color": colour}})
        return body[:-1]  # the measurements follow inside the same object

    def __enter__(self) -> GeoJSONWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def add_band(self, y0: int, mask_band: np.ndarray) -> None:
        """Add rows ``y0 : y0 + len(mask_band)`` of the (H, W) uint8 class-index mask; bands come in order."""
        if self._file is None:
            raise RuntimeError("GeoJSONWriter.add_band: the writer is closed")
        band = np.asarray(mask_band)
        if band.ndim != 2 or band.dtype != np.uint8 or band.shape[1] != self.width:
            raise ValueError(f"GeoJSONWriter.add_band: expected a (rows, {self.width}) uint8 class-index band, "
                             f"got {band.shape} {band.dtype}")
        if y0 != self._next_row:
            raise ValueError(f"GeoJSONWriter.add_band: bands must be consecutive, expected y0={self._next_row}, got {y0}")
        if y0 + len(band) > self.height:
            raise ValueError(f"GeoJSONWriter.add_band: rows {y0}:{y0 + len(band)} run past the mask height {self.height}")
        if len(band) == 0:
            return
        top = int(band.max())
        if top >= len(self.class_names):
            raise ValueError(f"GeoJSONWriter.add_band: mask value {top} has no class name "
                             f"(class_names has {len(self.class_names)})")
        self._next_row = y0 + len(band)
        self._merge(band_runs(np.ascontiguousarray(band), y0), last_row=self._next_row - 1)

    def _merge(self, runs: tuple, last_row: int) -> None:
        """Join this band's runs to the carried row's objects; write the objects that ended."""
        c_rows, c_x0, c_x1, c_class, c_id = self._carried
        rows = np.concatenate([c_rows, runs[0]])
        x0, x1 = np.concatenate([c_x0, runs[1]]), np.concatenate([c_x1, runs[2]])
        classes = np.concatenate([c_class, runs[3].astype(np.int64)])
        upper, lower = _overlaps(rows, x0, x1, classes, self.width)
        # Carried runs of one object are joined already (through rows above), whatever this band does.
        by_id = np.argsort(c_id, kind="stable")
        same = c_id[by_id[1:]] == c_id[by_id[:-1]]
        roots = _roots(len(rows), np.r_[upper, by_id[:-1][same]], np.r_[lower, by_id[1:][same]])
        # Each joined component takes the smallest id among its carried runs, or a new id.
        n_carried = len(c_rows)
        ids = self._component_ids(roots, c_id, n_carried)[roots]
        # Carried objects joined into one now answer to the joined id.
        renamed = dict(zip(c_id.tolist(), ids[:n_carried].tolist()))
        o_rows, o_x0, o_x1, o_class, o_id = self._open
        if any(old != new for old, new in renamed.items()):
            keys = np.array(sorted(renamed), np.int64)
            values = np.array([renamed[k] for k in keys.tolist()], np.int64)
            o_id = values[np.searchsorted(keys, o_id)]
        every = [np.concatenate([o_rows, runs[0]]), np.concatenate([o_x0, runs[1]]), np.concatenate([o_x1, runs[2]]),
                 np.concatenate([o_class, classes[n_carried:]]), np.concatenate([o_id, ids[n_carried:]])]
        last = rows == last_row
        still_open = np.isin(every[4], ids[last])
        self._carried = (rows[last], x0[last], x1[last], classes[last], ids[last])
        self._open = tuple(column[still_open] for column in every)
        self._write_objects(*(column[~still_open] for column in every))

    def _component_ids(self, roots: np.ndarray, carried_ids: np.ndarray, n_carried: int) -> np.ndarray:
        """Object id per root node: the smallest carried id in the component, else a fresh id."""
        component_id = np.full(len(roots), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(component_id, roots[:n_carried], carried_ids)
        fresh = np.unique(roots[n_carried:])
        fresh = fresh[component_id[fresh] == np.iinfo(np.int64).max]
        component_id[fresh] = np.arange(self._next_id, self._next_id + len(fresh))
        self._next_id += len(fresh)
        return component_id

    def _write_objects(self, rows, x0, x1, classes, ids) -> None:
        """Polygonize the finished objects (their runs, any order) and append them as features."""
        if len(ids) == 0:
            return
        order = np.lexsort((x0, rows, ids))
        rows, x0, x1, classes, ids = rows[order], x0[order], x1[order], classes[order], ids[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        pixels = np.add.reduceat(x1 - x0, starts)
        kept = pixels >= self.min_area_px
        if not kept.any():
            return
        keep_runs = np.repeat(kept, np.diff(np.r_[starts, len(ids)]))
        objects = np.cumsum(np.r_[True, ids[1:] != ids[:-1]]) - 1  # local object index of each run
        local = np.cumsum(kept) - 1
        xy, ring_of_vertex, object_of_ring = object_rings(rows[keep_runs], x0[keep_runs], x1[keep_runs],
                                                          local[objects[keep_runs]], self.width)
        shapely = self._shapely
        rings = shapely.linearrings(xy * np.array(self.scale[::-1]), indices=ring_of_vertex)  # (x, y) vertices
        texts = shapely.to_geojson(shapely.polygons(rings, indices=object_of_ring)).tolist()
        areas = (pixels[kept] * (self.scale[0] * self.scale[1])).tolist()
        parts = []
        for text, area, n, k in zip(texts, areas, pixels[kept].tolist(), classes[starts[kept]].tolist()):
            parts.append(f'{"," if self._count else ""}\n{{"type":"Feature","geometry":{text},"properties":'
                         f'{self._properties[k]},"measurements":{{"Area px^2":{area!r},"Mask pixels":{n}}}}}}}')
            self._count += 1
        self._file.write("".join(parts).encode())

    def close(self) -> int:
        """Finish the objects still open, write the file under its name, and return the object count."""
        if self._file is None:
            raise RuntimeError("GeoJSONWriter.close: the writer is already closed")
        if self._next_row != self.height:
            self.abort()
            raise ValueError(f"GeoJSONWriter.close: got {self._next_row} of {self.height} mask rows")
        self._merge(tuple(np.zeros(0, np.int64) for _ in range(4)), last_row=-1)
        self._file.write(b"\n]}\n")
        self._file.close()
        self._raw.close()
        self._file = None
        self._atomic.commit()
        return self._count

    def abort(self) -> None:
        """Stop without writing: the temporary file is removed and ``path`` is left as it was."""
        if self._file is not None:
            self._file.close()
            self._raw.close()
            self._file = None
        self._atomic.discard()
