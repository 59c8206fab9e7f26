"""TensorRT compatibility report: every op of an ONNX graph against the TensorRT ONNX parsers.

Tables follow onnx-tensorrt's ``docs/operators.md``: TensorRT 10.0 parses opsets 9..20 and
later 10.x releases up to 24; the 11.x line parses 9..24 with the same operator matrix as late
10.x (``11.x`` here mirrors the 10.15 matrix; recheck it against the ``operators.md`` that
ships with the TensorRT you deploy). ``10.x`` means "every 10.x release": opset <= 20 and the
ops missing in 10.0 count as unsupported.

Beyond the op name, restrictions that matter for our graphs are checked on the nodes: Resize
modes and antialiasing, reductions/Squeeze/Unsqueeze with non-constant axes, Q/DQ zero points
(TensorRT wants symmetric INT8), LayerNormalization's extra outputs. Random ops are flagged as
a trap even where a parser accepts them (the seed is ignored: the engine would not be
deterministic), and complex tensors and non-default op domains are unsupported everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ONNX ops whose parser row says "N" (not supported) in TensorRT 10.15 / 11.x.
_UNSUPPORTED_LATE = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})
# Ops that only later 10.x releases parse (missing from the 10.0 matrix).
_ADDED_AFTER_10_0 = frozenset({"Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter", "STFT",
                               "RandomNormal", "RandomNormalLike"})
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                        "Multinomial"})
RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
AXES_FROM_INPUT = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
                   "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze", "Unsqueeze"}


@dataclass(frozen=True)
class ParserTable:
    """One TensorRT line's ONNX parser: opset range and unsupported ops."""

    name: str
    min_opset: int
    max_opset: int
    unsupported: frozenset[str]


TABLES = {
    "10.x": ParserTable("10.x", 9, 20, _UNSUPPORTED_LATE | _ADDED_AFTER_10_0),
    "11.x": ParserTable("11.x", 9, 24, _UNSUPPORTED_LATE),
}


@dataclass
class OpStatus:
    """One op type's verdict per TensorRT line: ``ok``, ``restricted`` (with notes), ``trap`` or ``unsupported``."""

    op: str
    count: int
    status: dict[str, str] = field(default_factory=dict)  # table name -> verdict
    notes: list[str] = field(default_factory=list)


@dataclass
class CompatibilityReport:
    """Verdicts for one graph. ``compatible(line)`` is False when anything is ``unsupported`` there."""

    opset: int
    ops: list[OpStatus]
    graph_issues: dict[str, list[str]] = field(default_factory=dict)  # table -> graph-level problems

    def flagged(self, line: str | None = None) -> list[OpStatus]:
        """Ops that are not plainly ``ok`` (on ``line``, or on any line)."""
        lines = [line] if line else list(TABLES)
        return [o for o in self.ops if any(o.status.get(name) != "ok" for name in lines)]

    def unsupported(self, line: str) -> list[str]:
        ops = [o.op for o in self.ops if o.status.get(line) == "unsupported"]
        return ops + self.graph_issues.get(line, [])

    def compatible(self, line: str) -> bool:
        return not self.unsupported(line)

    def to_dict(self) -> dict:
        return {"opset": self.opset,
                "compatible": {line: self.compatible(line) for line in TABLES},
                "unsupported": {line: self.unsupported(line) for line in TABLES},
                "flagged": {o.op: {"status": o.status, "notes": o.notes} for o in self.flagged()}}


def _attribute(node, name: str, default):
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _node_restrictions(node, constants: dict) -> list[str]:
    """``constants``: name -> numpy value of every initializer and Constant output."""
    notes = []
    op = node.op_type
    if op == "Resize":
        mode = _attribute(node, "mode", "nearest")
        coordinates = _attribute(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in RESIZE_MODES:
            notes.append(f"Resize mode {mode!r} (TensorRT: nearest, linear)")
        if coordinates not in RESIZE_COORDINATE_MODES:
            notes.append(f"Resize coordinate_transformation_mode {coordinates!r}")
        if mode == "nearest" and _attribute(node, "nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST_MODES:
            notes.append(f"Resize nearest_mode {_attribute(node, 'nearest_mode', '')!r}")
        if _attribute(node, "antialias", 0):
            notes.append("Resize with antialias=1 (TensorRT: not supported)")
    elif op in AXES_FROM_INPUT and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
        notes.append(f"{op} axes come from a computed tensor (TensorRT: must be a build-time constant)")
    elif op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero_point = constants.get(node.input[2])
        if zero_point is None or zero_point.any():
            notes.append(f"{op} with a non-zero zero point (TensorRT: symmetric quantization only)")
    elif op == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        notes.append("LayerNormalization uses Mean/InvStdDev outputs (TensorRT: only Y)")
    return notes


def check_graph(model) -> CompatibilityReport:
    """Check an ONNX ``model`` (a ModelProto) against every table in :data:`TABLES`."""
    from onnx import numpy_helper

    from .onnx_export import COMPLEX_TYPES, opset_version

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    opset = opset_version(model)
    by_op: dict[str, OpStatus] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        entry = by_op.setdefault(key, OpStatus(op=key, count=0))
        entry.count += 1
        for note in _node_restrictions(node, constants):
            if note not in entry.notes:
                entry.notes.append(note)
    for entry in by_op.values():
        for name, table in TABLES.items():
            if "::" in entry.op or entry.op in table.unsupported:
                verdict = "unsupported"
            elif entry.op in RANDOM_OPS:
                verdict = "trap"
            elif entry.notes:
                verdict = "restricted"
            else:
                verdict = "ok"
            entry.status[name] = verdict
        if entry.op in RANDOM_OPS:
            entry.notes.append("random op: TensorRT ignores the seed, so results are not reproducible")
    issues: dict[str, list[str]] = {}
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    has_complex = any(v.type.tensor_type.elem_type in COMPLEX_TYPES for v in values)
    for name, table in TABLES.items():
        problems = []
        if not table.min_opset <= opset <= table.max_opset:
            problems.append(f"opset {opset} outside {table.min_opset}..{table.max_opset}")
        if has_complex:
            problems.append("complex tensors")
        issues[name] = problems
    ops = sorted(by_op.values(), key=lambda o: (-o.count, o.op))
    return CompatibilityReport(opset=opset, ops=ops, graph_issues=issues)


def format_report(report: CompatibilityReport) -> str:
    """A plain-text table: one line per flagged op, then the verdict per TensorRT line."""
    lines = [f"TensorRT compatibility (opset {report.opset}, {len(report.ops)} op types, "
             f"{sum(o.count for o in report.ops)} nodes)"]
    for entry in report.flagged():
        verdicts = ", ".join(f"{line}: {verdict}" for line, verdict in entry.status.items())
        notes = f" - {'; '.join(entry.notes)}" if entry.notes else ""
        lines.append(f"  {entry.op} x{entry.count}: {verdicts}{notes}")
    for line in TABLES:
        bad = report.unsupported(line)
        lines.append(f"  TensorRT {line}: " + ("parses every op" if not bad else f"UNSUPPORTED {bad}"))
    return "\n".join(lines)
