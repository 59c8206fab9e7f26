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
    from mrdl_export.swaps import ConvTransposeAsConv, swap_for_deploy

    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 2, stride=2),
                          nn.Sequential(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1), nn.GELU(),
                                        nn.ConvTranspose2d(4, 2, 2, stride=2)),
                          nn.ConvTranspose2d(2, 2, 2, stride=2, groups=2))
    assert [line.split(":")[0] for line in swap_for_deploy(model)] == ["0", "1.2"]
    assert isinstance(model[0], ConvTransposeAsConv) and isinstance(model[1][2], ConvTransposeAsConv)
    assert isinstance(model[1][0], nn.ConvTranspose2d) and isinstance(model[2], nn.ConvTranspose2d)
    with pytest.raises(ValueError, match="kernel == stride"):
        ConvTransposeAsConv(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1))


def test_the_deploy_module_swaps_enc_p2_and_leaves_the_model_alone(tiny_model):
    from mrdl_export.deploy import build_deploy_module
    from mrdl_export.swaps import ConvTransposeAsConv, PixelAttentionAsConv, ReconstructConvFirst

    tiny_model.set_phase("matmul")  # the deploy module's phase (the config is replaced, not changed)
    keys = list(tiny_model.state_dict())
    deploy, report = build_deploy_module(tiny_model)
    assert [line.split(":")[0] for line in report.replaced] == [
        "frequency_prompt.up.0", "frequency_prompt.up.3", *(f"cross_modality.reconstruct.{i}" for i in range(4)),
        *(f"decoder.up{i}.attention" for i in (4, 3, 2, 1))]
    assert isinstance(deploy.frequency_prompt.up[0], ConvTransposeAsConv)
    assert all(isinstance(r, ReconstructConvFirst) for r in deploy.cross_modality.reconstruct)
    assert isinstance(deploy.decoder.up1.attention, PixelAttentionAsConv)
    assert isinstance(tiny_model.frequency_prompt.up[0], nn.ConvTranspose2d)  # the checkpoint's layout stays
    assert list(tiny_model.state_dict()) == keys
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tiny_model.frequency_prompt(image)
        got = deploy.frequency_prompt(image)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _trained_like(module: nn.Module, seed: int) -> nn.Module:
    """``module`` in eval mode with random weights and BatchNorm statistics (not the identity at init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(values + 0.5 if name.endswith("running_var") else values - 0.5)
    return module.eval()


@pytest.mark.parametrize("channels,scale,side", [(8, 4, 3), (5, 2, 4), (6, 1, 2)])
def test_reconstruct_conv_first_is_the_same_function(channels, scale, side):
    from mrdl.layers import Reconstruct
    from mrdl_export.swaps import ReconstructConvFirst

    original = _trained_like(Reconstruct(channels, scale=scale), seed=channels)
    swapped = ReconstructConvFirst(original).eval()
    tokens = torch.randn(2, side * side, channels, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = original(tokens), swapped(tokens)
    assert got.shape == expected.shape == (2, channels, side * scale, side * scale)
    assert (expected > 0).any() and (expected == 0).any()  # the ReLU cuts somewhere: its place in the order counts
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_pixel_attention_as_conv_is_the_same_function():
    from mrdl.layers import PixelLevelAttention
    from mrdl_export.swaps import PixelAttentionAsConv

    original = _trained_like(PixelLevelAttention(6), seed=3)
    swapped = PixelAttentionAsConv(original).eval()
    skip = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(4))  # not square
    with torch.no_grad():
        expected, got = original(skip), swapped(skip)
    assert got.shape == expected.shape == skip.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    original.mlp[1] = nn.GELU()  # not the MLP it was written for: refused, not computed wrongly
    with pytest.raises(ValueError, match="Linear, ReLU, Linear"):
        PixelAttentionAsConv(original)


@pytest.mark.parametrize("scale", [1, 2, 3, 16])
def test_nearest_as_gather_is_the_nearest_upsample(scale):
    from mrdl_export.swaps import NearestAsGather, is_nearest_upsample

    upsample = nn.Upsample(scale_factor=scale, mode="nearest")
    x = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(scale))  # not square
    expected, got = upsample(x), NearestAsGather(upsample)(x)
    assert got.shape == expected.shape == (2, 5, 3 * scale, 4 * scale)
    assert torch.equal(got, expected)  # copies, so exactly
    for other in (nn.Upsample(scale_factor=2, mode="bilinear"), nn.Upsample(size=(6, 6), mode="nearest"),
                  nn.Upsample(scale_factor=1.5, mode="nearest"), nn.Upsample(scale_factor=(2, 3), mode="nearest")):
        assert not is_nearest_upsample(other)
        with pytest.raises(ValueError, match="integer factor"):
            NearestAsGather(other)


@pytest.mark.slow
def test_the_onnxruntime_int8_model_gathers_where_model_onnx_resizes(variants_export):
    onnx = pytest.importorskip("onnx")

    replaced = variants_export.folding["int8_replaced"]
    assert [line.split(":")[0] for line in replaced] == [
        *(f"cross_modality.reconstruct.{i}.upsample" for i in range(4)), *(f"decoder.up{i}.upsample" for i in (4, 3, 2, 1))]
    ops = {name: [node.op_type for node in onnx.load(str(path)).graph.node]
           for name, path in (("fp32", variants_export.onnx_path), ("int8", variants_export.int8_path))}
    assert ops["fp32"].count("Resize") == 8 and "Resize" not in ops["int8"]
    assert ops["int8"].count("Gather") - ops["fp32"].count("Gather") == 16  # a row and a column Gather each
    assert sorted(p.name for p in variants_export.out_dir.iterdir()) == sorted(
        ["model.json", "model.onnx", "model.int8.onnx", "model.fp16.onnx"])  # the quantized source is not left there


@pytest.mark.slow
def test_exported_graph_has_no_conv_transpose_and_int8_quantizes_the_swap(variants_export, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mrdl_export.qdq_graph import node_scope
    from mrdl_export.quantize import quantize_int8

    fp32 = onnx.load(str(variants_export.onnx_path))
    assert "ConvTranspose" not in {node.op_type for node in fp32.graph.node}
    assert sum("ConvTranspose2d" in line for line in variants_export.folding["replaced"]) == 2
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
