"""Automatic mixed precision for INT8: keep the fewest blocks in FP32 that hold task accuracy.

``mrdl-export --int8`` with ``--int8-keep-fp32 auto`` (the default) runs :func:`search_fp32_blocks`
on the calibration images:

1. Quantize everything but the phase spectrum and the attention's activation x activation
   MatMuls (:func:`mrdl_export.quantize.quantize_full`) and measure it against the FP32 model.
2. Sensitivity: for each block (:func:`mrdl_export.qdq_graph.model_blocks`: ``vision_encoder.down2``,
   ``cross_modality.up_blocks.1``, ``decoder.up1``, ...), the same INT8 model with only that block
   back in FP32 (:func:`mrdl_export.qdq_graph.keep_float`, no re-calibration), scored by the mean
   |delta probability| against FP32. A block's gain is how much it lowers that error.
3. Greedy: while the criterion fails, put back in FP32 the block with the next largest gain
   (blocks that gain nothing are never kept) and measure again.

The criterion, on the first :data:`SEARCH_IMAGES` calibration images (one to three dozen
candidates each run them): mask agreement with FP32 must reach :data:`AUTO_MIN_AGREEMENT`, and,
with ground truth for the images (an LViT split's masks), task Dice
against it may drop at most ``SEARCH_MARGIN`` of the export gate's ``--int8-max-dice-drop``
below FP32's. Both, because the calibration images are usually training images, on which a
model is more confident than on held-out ones: a Dice-only criterion on them can pass a model that
loses Dice on held-out images while its mask agreement is low (docs/measurements.md, "INT8
variants"). What is measured is what ships: the model written is the searched one, not a
re-calibration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .parity import compare, onnx_probabilities, task_dice

SEARCH_MARGIN = 0.5  # the search aims at half the gate's allowed drop
SEARCH_IMAGES = 16  # the first calibration images the search measures on (each candidate runs them all)
AUTO_MIN_AGREEMENT = 0.98  # without ground truth: mask Dice agreement with FP32


@dataclass
class Score:
    """One candidate against FP32 on the search images."""

    mean_abs_diff: float
    agreement: float
    drop_points: float | None  # task Dice drop against FP32, points; None without ground truth


@dataclass
class SearchResult:
    """What the search measured and chose (stored in the manifest under ``int8_quantization.search``)."""

    criterion: str
    images: int
    source: str
    all_int8: Score
    sensitivity: list[dict]  # {"block", "nodes", "mean_abs_diff", "gain"}, largest gain first
    kept: list[str]
    final: Score
    satisfied: bool
    steps: list[dict] = field(default_factory=list)  # {"kept", **Score} after each added block

    def to_dict(self) -> dict:
        return asdict(self)


def search_fp32_blocks(quantized, fp32, inputs: list[np.ndarray], labels: np.ndarray | None, *, source: str,
                       max_drop_points: float, threshold: float = 0.5, progress: bool = False,
                       max_images: int = SEARCH_IMAGES, probabilities=onnx_probabilities):
    """(the INT8 ModelProto with the chosen blocks in FP32, :class:`SearchResult`).

    ``quantized``: the fully quantized model (:func:`mrdl_export.quantize.quantize_full`), not changed;
    ``fp32``: the model it came from; ``inputs``: the graph's inputs for the search images;
    ``labels``: their ground truth (N, S, S), or None; the first ``max_images`` are used;
    ``probabilities``: how a candidate runs, ``f(model bytes, inputs)`` (ONNX Runtime; OpenVINO for the
    openvino target: :func:`mrdl_export.openvino_export.probabilities_for`).
    """
    import onnx
    from tqdm import tqdm

    from .qdq_graph import keep_float, model_blocks

    inputs = [x[:max_images] for x in inputs]
    labels = None if labels is None else labels[:max_images]
    reference = onnx_probabilities(fp32.SerializeToString(), inputs)
    reference_dice = None if labels is None else task_dice(reference, labels, threshold=threshold).mean()

    def score(model) -> Score:
        candidate = probabilities(model.SerializeToString(), inputs)
        parity = compare(reference, candidate, source=source, threshold=threshold)
        drop = None if labels is None else float(
            100 * (reference_dice - task_dice(candidate, labels, threshold=threshold).mean()))
        return Score(mean_abs_diff=parity.mean_abs_diff, agreement=parity.dice_agreement, drop_points=drop)

    limit = SEARCH_MARGIN * max_drop_points
    criterion = f"mask Dice agreement with FP32 >= {AUTO_MIN_AGREEMENT:g}"
    if labels is None:
        criterion += " (no ground truth)"
        good = lambda s: s.agreement >= AUTO_MIN_AGREEMENT  # noqa: E731
    else:
        criterion += f" and task Dice drop against FP32 <= {limit:g} points ({SEARCH_MARGIN:g} x --int8-max-dice-drop)"
        good = lambda s: s.agreement >= AUTO_MIN_AGREEMENT and s.drop_points <= limit  # noqa: E731

    def with_float(blocks: list[str]):
        candidate = onnx.ModelProto()
        candidate.CopyFrom(quantized)
        keep_float(candidate, fp32, {name for block in blocks for name in block_nodes[block]})
        return candidate

    block_nodes = model_blocks(fp32)
    baseline = score(quantized)
    sensitivity = []
    if not good(baseline):
        for block in tqdm(block_nodes, desc="int8 sensitivity", unit="block", disable=not progress):
            error = score(with_float([block])).mean_abs_diff
            sensitivity.append({"block": block, "nodes": len(block_nodes[block]), "mean_abs_diff": error,
                                "gain": baseline.mean_abs_diff - error})
        sensitivity.sort(key=lambda row: row["gain"], reverse=True)
    kept, model, current, steps = [], quantized, baseline, []
    for row in sensitivity:
        if good(current) or row["gain"] <= 0:
            break
        kept.append(row["block"])
        model = with_float(kept)
        current = score(model)
        steps.append({"kept": list(kept), **asdict(current)})
    result = SearchResult(criterion=criterion, images=len(inputs[0]), source=source, all_int8=baseline,
                          sensitivity=sensitivity, kept=kept, final=current, satisfied=good(current), steps=steps)
    return model, result
