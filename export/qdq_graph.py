"""Graph surgery on QDQ ONNX models, shared by every INT8 recipe (mrdl_export.quantize for ONNX Runtime and
TensorRT, mrdl_export.openvino_export for NNCF): which nodes belong to which model block, which stay FP32
and why, putting chosen nodes back in FP32, and the rewrite that makes the QDQ graph portable."""

from __future__ import annotations

COMPUTE_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
MODEL_SCOPES = ("vision_encoder", "cross_modality", "frequency_prompt", "decoder")  # MRDL's top-level modules


def node_scope(node) -> str:
    """The module path the dynamo exporter recorded for ``node`` ('' when absent)."""
    return next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")


def scope_path(node) -> list[str]:
    """``node``'s enclosing modules, outermost first: ['decoder', 'decoder.up1', 'decoder.up1.conv', ...]."""
    parts = [p for p in node_scope(node).strip("[]").replace("'", "").split(", ") if p]
    return [p for p in parts if p and not p.startswith("_") and "." in p or p in MODEL_SCOPES]


def block_of(node) -> str | None:
    """The block ``node`` belongs to: its module two levels down (``decoder.up1``; an item of a module
    list, such as ``cross_modality.down_blocks.1``, is a block of its own since the list is never called),
    its top-level module when it sits directly in one; None outside the model's modules."""
    path = scope_path(node)
    return path[1] if len(path) > 1 else (path[0] if path else None)


def phase_nodes(model) -> list[str]:
    """Names of the nodes that compute the phase spectrum (dynamo name scope ``frequency_prompt.phase``)."""
    return [node.name for node in model.graph.node if "frequency_prompt.phase" in node_scope(node)]


def activation_matmuls(model) -> list[str]:
    """MatMul nodes with no initializer input: products of two activations (attention q.k^T, attn.v)."""
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and not any(name in weights for name in node.input)]


def model_blocks(model) -> dict[str, list[str]]:
    """Blocks (:func:`block_of`) that hold a Conv / MatMul with weights -> all their node names, in graph order.
    The phase spectrum is not a block: it always stays FP32."""
    weights = {init.name for init in model.graph.initializer}
    blocks: dict[str, list[str]] = {}
    for node in model.graph.node:
        block = block_of(node)
        if block is not None and "frequency_prompt.phase" not in node_scope(node):
            blocks.setdefault(block, []).append(node.name)
    nodes = {node.name: node for node in model.graph.node}
    return {block: names for block, names in blocks.items()
            if any(nodes[n].op_type in COMPUTE_OPS and set(nodes[n].input) & weights for n in names)}


def scope_nodes(model, scopes: tuple[str, ...]) -> list[str]:
    """Nodes inside any of ``scopes``: top-level scopes (``decoder``) or blocks (``decoder.up1``)."""
    wanted = set(scopes)
    return [node.name for node in model.graph.node if wanted & set(scope_path(node))]


def excluded_nodes(model, *, keep_fp32: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Nodes left in FP32, by reason: ``phase``, ``activation_matmul``, ``kept`` (``keep_fp32`` scopes / blocks)."""
    phase = phase_nodes(model)
    attention = [name for name in activation_matmuls(model) if name not in phase]
    kept = [name for name in scope_nodes(model, keep_fp32) if name not in phase and name not in attention]
    return {"phase": phase, "activation_matmul": attention, "kept": kept}


def keep_float(quantized, fp32, names: set[str]) -> int:
    """Give the nodes ``names`` of ``quantized`` their FP32 inputs back (activations and weights), as in
    ``fp32``, the model it was quantized from; drop the Q/DQ nodes and initializers nothing reads any more.

    Returns how many inputs changed. ``quantized`` is changed in place.
    """
    from onnx import TensorProto

    original = {node.name: node for node in fp32.graph.node}
    fp32_weights = {init.name: init for init in fp32.graph.initializer}
    present = {init.name for init in quantized.graph.initializer}
    produced = {out for node in quantized.graph.node for out in node.output}
    changed = 0
    for node in quantized.graph.node:
        if node.name in names and node.name in original:
            for index, tensor in enumerate(original[node.name].input):
                if tensor in fp32_weights and (tensor in produced or tensor not in present):
                    # the quantizer may give a weight's DequantizeLinear output the weight's own name (biases)
                    name = tensor + "_float" if tensor in produced else tensor
                    if name not in present:
                        weight = TensorProto()
                        weight.CopyFrom(fp32_weights[tensor])
                        weight.name = name
                        quantized.graph.initializer.append(weight)
                        present.add(name)
                    tensor = name
                if node.input[index] != tensor:
                    node.input[index] = tensor
                    changed += 1
    remove_dead_qdq(quantized)
    return changed


def read_float_inputs(model, names: set[str]) -> int:
    """Point the nodes ``names`` at the float tensors behind their Q->DQ inputs; drop unused Q/DQ.

    Weights quantized without a QuantizeLinear node stay as they are (use :func:`keep_float` for
    those). Returns how many inputs were rewired. The model is changed in place.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    float_source = {}  # DQ output -> the float tensor its Q quantized
    for node in model.graph.node:
        quantizer = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quantizer is not None and quantizer.op_type == "QuantizeLinear":
            float_source[node.output[0]] = quantizer.input[0]
    rewired = 0
    for node in model.graph.node:
        if node.name in names:
            for index, tensor in enumerate(node.input):
                if tensor in float_source:
                    node.input[index] = float_source[tensor]
                    rewired += 1
    remove_dead_qdq(model)
    return rewired


def remove_dead_qdq(model) -> None:
    """Remove QuantizeLinear / DequantizeLinear nodes whose outputs nothing reads, then unread initializers."""
    while True:
        used = {t for node in model.graph.node for t in node.input} | {o.name for o in model.graph.output}
        dead = [node for node in model.graph.node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    used = {t for node in model.graph.node for t in node.input}
    for init in [init for init in model.graph.initializer if init.name not in used]:
        model.graph.initializer.remove(init)


ARITHMETIC_OPS = ("Add", "Sub", "Mul", "Div")


def constant_tensors(model) -> set[str]:
    """Tensors whose values depend on no graph input, only on initializers, Constant nodes and input shapes
    (``Shape``): what a runtime that fixes the batch size folds into constants."""
    producers = {out: node for node in model.graph.node for out in node.output}
    known = {init.name for init in model.graph.initializer}
    inputs = {tensor.name for tensor in model.graph.input} - known
    constant: dict[str, bool] = {}

    def is_constant(tensor: str) -> bool:
        stack = [tensor]
        while stack:  # iterative depth-first: graphs are deeper than Python's recursion limit
            name = stack[-1]
            if name in constant:
                stack.pop()
                continue
            if name in known or name == "":
                constant[name] = True
            elif name in inputs or name not in producers:
                constant[name] = False
            else:
                node = producers[name]
                if node.op_type in ("Constant", "Shape", "Size"):
                    constant[name] = True
                else:
                    pending = [i for i in node.input if i not in constant]
                    if pending:
                        stack.extend(pending)
                        continue
                    constant[name] = all(constant[i] for i in node.input)
            stack.pop()
        return constant[tensor]

    return {out for node in model.graph.node for out in node.output if is_constant(out)}


def portable_qdq(model) -> list[str]:
    """Rewrite the QDQ pattern that OpenVINO's CPU plugin cannot compile into one every QDQ consumer runs.

    The pattern: an Add / Sub / Mul / Div of two DequantizeLinear outputs, one of which dequantizes a
    QuantizeLinear of a *constant* tensor that the graph computes at run time (here ``Expand`` of a
    folded constant to the batch size). Once the batch is fixed, OpenVINO folds that branch into a
    dequantized constant, and its low-precision AddTransformation throws on an Add of a dequantized
    constant and a dequantized activation (OpenVINO 2026.4: ``Check 'index < m_inputs.size()'
    failed``; with a dynamic batch it compiles and gives wrong masks). The operand is given its float
    value instead (the QuantizeLinear's input), so the op reads one dequantized activation and one
    float constant: OpenVINO folds it as a bias, ONNX Runtime runs it in float between the integer
    ops, TensorRT fuses the float constant. Weights and biases stored as quantized initializers
    (DequantizeLinear of an initializer, no QuantizeLinear) are a different pattern and stay.

    Returns the names of the nodes rewired; ``model`` is changed in place.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    constant = constant_tensors(model)

    def quantized_constant(tensor: str) -> str | None:
        """The float constant behind ``tensor`` = DQ(Q(constant)), else None."""
        dequantize = producers.get(tensor)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return None
        quantize = producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.input[0] not in constant:
            return None
        return quantize.input[0]

    rewired = []
    for node in model.graph.node:
        if node.op_type not in ARITHMETIC_OPS or len(node.input) != 2:
            continue
        if not all(producers.get(t) is not None and producers[t].op_type == "DequantizeLinear" for t in node.input):
            continue
        floats = [quantized_constant(t) for t in node.input]
        if any(floats) and not all(floats):
            index = 0 if floats[0] else 1
            node.input[index] = floats[index]
            rewired.append(node.name)
    remove_dead_qdq(model)
    return rewired


# Ops that move or select uint8 values without arithmetic: ONNX Runtime runs them on the integers when the
# DequantizeLinear before and the QuantizeLinear after carry the same parameters.
DATA_MOVEMENT_OPS = ("Gather", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "MaxPool",
                     "Resize")


class _Graph:
    """Producer and consumer lookups over a ModelProto's nodes, and its scalar initializers."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            for tensor in node.input:
                self.consumers.setdefault(tensor, []).append(node)
        outputs = {o.name for o in model.graph.output}
        for name in outputs:
            self.consumers.setdefault(name, []).append(None)  # a graph output counts as a reader
        self.values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}

    def only_reader(self, tensor: str):
        """The one node that reads ``tensor``, else None (no reader, several, or a graph output)."""
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 else None

    def made_by(self, tensor: str, op_type: str):
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == op_type else None

    def params(self, node) -> tuple[float, int] | None:
        """(scale, zero point) of a per-tensor Q / DQ node with constant parameters, else None."""
        if len(node.input) < 3 or node.input[1] not in self.values or node.input[2] not in self.values:
            return None
        scale, zero = self.values[node.input[1]], self.values[node.input[2]]
        if scale.size != 1 or zero.size != 1:
            return None
        return float(scale.reshape(())), int(zero.reshape(()))


def share_concat_params(model) -> list[str]:
    """Quantize each Concat input directly with the Concat output's parameters where nothing else reads it.

    A QDQ Concat whose input was quantized with other parameters than its output becomes an ONNX Runtime
    ``QLinearConcat`` that requantizes that input through a lookup table, one call per channel run (at
    224x224x64, 1.3 ms on one thread); with equal parameters it copies. The input's QuantizeLinear (and
    the Q/DQ pairs of data-movement ops between it and the Concat, such as the Gathers of a nearest
    upsample) take the output's scale and zero point. The values reaching the Concat's consumers are
    then rounded once instead of twice: the Concat's output was quantized with those parameters anyway.
    (A value beyond the input's calibrated range but within the output's is no longer clipped to the
    input's range on the way.)

    Left as it is: an input whose quantized tensor anything else reads, and one whose chain starts at a
    Relu that ONNX Runtime folds only into a zero point of 0 (unsigned) while the output's is not 0.
    Returns the names of the Concats changed; ``model`` is changed in place.
    """
    graph = _Graph(model)
    changed = []
    for concat in model.graph.node:
        output_q = graph.only_reader(concat.output[0]) if concat.op_type == "Concat" else None
        if output_q is None or output_q.op_type != "QuantizeLinear" or graph.params(output_q) is None:
            continue
        target = graph.params(output_q)
        retargeted = False
        for tensor in concat.input:
            chain = _concat_input_chain(graph, tensor, concat, target)
            if chain and any(graph.params(node) != target for node in chain):
                for node in chain:
                    node.input[1], node.input[2] = output_q.input[1], output_q.input[2]
                retargeted = True
        if retargeted:
            changed.append(concat.name)
    remove_dead_qdq(model)  # the inputs' own scale and zero point initializers
    return changed


def _concat_input_chain(graph: _Graph, tensor: str, concat, target: tuple[float, int]) -> list:
    """The Q/DQ nodes that quantize ``concat``'s input ``tensor``, back through single-reader data-movement
    ops; [] when the input cannot take ``target`` without changing another reader or losing a Relu fold."""
    dequantize = graph.made_by(tensor, "DequantizeLinear")
    if dequantize is None or graph.only_reader(tensor) is not concat:
        return []
    chain = []
    while True:
        quantize = graph.made_by(dequantize.input[0], "QuantizeLinear")
        if (quantize is None or graph.only_reader(dequantize.input[0]) is not dequantize
                or graph.params(quantize) is None or graph.params(quantize) != graph.params(dequantize)):
            return []
        chain += [dequantize, quantize]
        source = graph.producer.get(quantize.input[0])
        upstream = None
        if (source is not None and source.op_type in DATA_MOVEMENT_OPS
                and graph.only_reader(quantize.input[0]) is quantize):
            upstream = graph.made_by(source.input[0], "DequantizeLinear")
        if (upstream is not None and graph.only_reader(source.input[0]) is source
                and graph.params(upstream) == graph.params(quantize)):
            dequantize = upstream
            continue
        if source is not None and source.op_type in ("Relu", "Clip") and target[1] != 0:
            return []
        return chain


def fold_relu_requantize(model) -> int:
    """Quantize straight into a Relu's unsigned zero-point-0 parameters: Q_a, DQ_a, Relu, Q_b -> Q_b.

    The quantizer keeps a Relu with its own Q/DQ pair (``QDQKeepRemovableActivations``, so that the mixed
    precision search can put any node back in FP32). ONNX Runtime drops the Relu, but where the tensor
    before it had its own parameters a float DequantizeLinear / QuantizeLinear requantization stays
    (a 224x224x32 map: 1 ms). A uint8 QuantizeLinear with zero point 0 clips below zero itself, so Q_b
    reading the Relu's input gives the Relu's result, rounded once instead of twice. Only where each
    tensor of the chain has one reader. Returns how many chains were folded; ``model`` is changed in place.
    """
    graph = _Graph(model)
    folded = 0
    for relu in list(model.graph.node):
        if relu.op_type != "Relu":
            continue
        after = graph.only_reader(relu.output[0])
        before = graph.made_by(relu.input[0], "DequantizeLinear")
        if after is None or after.op_type != "QuantizeLinear" or before is None:
            continue
        first = graph.made_by(before.input[0], "QuantizeLinear")
        zero_point = graph.values.get(after.input[2]) if len(after.input) > 2 else None
        if (first is None or zero_point is None or zero_point.dtype != "uint8" or graph.params(after) is None
                or graph.params(after)[1] != 0 or graph.only_reader(relu.input[0]) is not relu
                or graph.only_reader(before.input[0]) is not before):
            continue
        after.input[0] = first.input[0]
        for node in (relu, before, first):
            model.graph.node.remove(node)
        folded += 1
    if folded:
        remove_dead_qdq(model)
    return folded
