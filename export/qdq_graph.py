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
