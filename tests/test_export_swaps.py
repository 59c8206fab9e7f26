"""Export-time module swaps (mrdl_export.swaps): the 1x1-conv form of a kernel == stride ConvTranspose2d computes
the same function, replaces exactly the transposed convolutions it can, leaves the training model alone, and
gives an exported graph without ConvTranspose whose INT8 model runs that convolution as a QLinearConv."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


@pytest.mark.parametrize("c_in,c_out,k,bias", [(8, 8, 2, True), (6, 5, 3, True), (4, 7, 2, False), (3, 3, 1, True)])
def test_conv_transpose_as_conv_matches_the_transposed_convolution(c_in, c_out, k, bias):
    from mrdl_export.swaps import ConvTransposeAsConv

    torch.manual_seed(0)
    transpose = nn.ConvTranspose2d(c_in, c_out, k, stride=k, bias=bias).eval()
    swapped = ConvTransposeAsConv(transpose).eval()
    x = torch.randn(3, c_in, 5, 7)  # (B, C_in, H, W), not square: rows and columns cannot be swapped unnoticed
    with torch.no_grad():
        expected, got = transpose(x), swapped(x)
    assert got.shape == expected.shape == (3, c_out, 5 * k, 7 * k)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_only_kernel_equals_stride_transposes_are_swapped():
    from mrdl_export.swaps import ConvTransposeAsConv, swap_conv_transposes

    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 2, stride=2),
                          nn.Sequential(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1), nn.GELU(),
                                        nn.ConvTranspose2d(4, 2, 2, stride=2)),
                          nn.ConvTranspose2d(2, 2, 2, stride=2, groups=2))
    assert swap_conv_transposes(model) == ["0", "1.2"]
    assert isinstance(model[0], ConvTransposeAsConv) and isinstance(model[1][2], ConvTransposeAsConv)
    assert isinstance(model[1][0], nn.ConvTranspose2d) and isinstance(model[2], nn.ConvTranspose2d)
    with pytest.raises(ValueError, match="kernel == stride"):
        ConvTransposeAsConv(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1))


def test_the_deploy_module_swaps_enc_p2_and_leaves_the_model_alone(tiny_model):
    from mrdl_export.deploy import build_deploy_module
    from mrdl_export.swaps import ConvTransposeAsConv

    tiny_model.set_phase("matmul")  # the deploy module's phase (the config is replaced, not changed)
    keys = list(tiny_model.state_dict())
    deploy, report = build_deploy_module(tiny_model)
    assert [line.split(":")[0] for line in report.replaced] == ["frequency_prompt.up.0", "frequency_prompt.up.3"]
    assert isinstance(deploy.frequency_prompt.up[0], ConvTransposeAsConv)
    assert isinstance(tiny_model.frequency_prompt.up[0], nn.ConvTranspose2d)  # the checkpoint's layout stays
    assert list(tiny_model.state_dict()) == keys
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tiny_model.frequency_prompt(image)
        got = deploy.frequency_prompt(image)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_exported_graph_has_no_conv_transpose_and_int8_quantizes_the_swap(variants_export, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mrdl_export.qdq_graph import node_scope
    from mrdl_export.quantize import quantize_int8

    fp32 = onnx.load(str(variants_export.onnx_path))
    assert "ConvTranspose" not in {node.op_type for node in fp32.graph.node}
    assert len(variants_export.folding["replaced"]) == 2
    up_convs = [n.name for n in fp32.graph.node if n.op_type == "Conv" and "frequency_prompt.up" in node_scope(n)]
    assert len(up_convs) == 2
    calibration = [np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32)]
    int8 = onnx.load(str(quantize_int8(variants_export.onnx_path, tmp_path / "int8.onnx", calibration)))
    producers = {out: node.op_type for node in int8.graph.node for out in node.output}
    for node in (n for n in int8.graph.node if n.name in up_convs):
        assert [producers.get(name) for name in node.input] == ["DequantizeLinear"] * 3  # input, weight, bias
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(int8.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "ConvTranspose" not in optimized and "QLinearConv" in optimized
