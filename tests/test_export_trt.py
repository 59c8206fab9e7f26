"""TensorRT parts that need no GPU: option validation, profile shapes, TensorRT 10 vs 11 branching with a
stand-in ``tensorrt`` module, and the op-compatibility report on hand-built graphs. Also the parity
figures' arithmetic."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mrdl_export.tensorrt_build import (EngineOptions, TensorRTUnavailable, build_engine, engine_source,
                                        major_version, profile_shapes)


@pytest.mark.parametrize("options, message", [
    (EngineOptions(min_batch=0), "--min-batch"),
    (EngineOptions(min_batch=4, max_batch=2), "min <= opt <= max"),
    (EngineOptions(min_batch=1, opt_batch=32, max_batch=16), "min <= opt <= max"),
    (EngineOptions(workspace_mb=0), "--workspace"),
    (EngineOptions(precision="int4"), "precision"),
])
def test_engine_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        options.validate()


def test_profile_shapes_cover_every_input():
    shapes = profile_shapes({"image": (3, 224, 224), "text_features": (77, 512)},
                            EngineOptions(min_batch=2, max_batch=16))
    assert shapes["image"] == ((2, 3, 224, 224), (9, 3, 224, 224), (16, 3, 224, 224))
    assert shapes["text_features"][2] == (16, 77, 512)
    assert profile_shapes({"image": (3, 64, 64)}, EngineOptions(opt_batch=4))["image"][1] == (4, 3, 64, 64)


def test_engine_source_follows_the_api_line():
    assert engine_source("fp16", 10) == "fp32"  # FP16 builder flag on the FP32 graph
    assert engine_source("fp16", 11) == "fp16"  # strongly typed: the FP16 graph
    assert engine_source("int8", 10) == engine_source("int8", 11) == "int8"
    with pytest.raises(TensorRTUnavailable, match="too old"):
        major_version(SimpleNamespace(__version__="8.6.1"))


class FakeTensorRT:
    """Records what build_engine asks of the TensorRT API."""

    def __init__(self, version: str) -> None:
        self.__version__ = version
        self.calls: list[tuple] = []
        fake = self

        class Logger:
            WARNING = "warning"

            def __init__(self, severity) -> None:
                fake.calls.append(("logger", severity))

        class Profile:
            def set_shape(self, name, smallest, optimal, largest):
                fake.calls.append(("set_shape", name, smallest, optimal, largest))

        class Cache:
            def serialize(self):
                return b"timing-cache"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile",))

            def create_timing_cache(self, data):
                fake.calls.append(("read_cache", data))
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_cache", ignore_mismatch))

            def get_timing_cache(self):
                return Cache()

        class Builder:
            def __init__(self, logger) -> None:
                pass

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine-bytes"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger) -> None:
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return True

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.BuilderFlag = SimpleNamespace(FP16="FP16", INT8="INT8")
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

    def flags(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "flag"]


GPU = {"name": "Fake GPU", "compute_capability": "9.0"}


@pytest.mark.parametrize("version, precision, flags, api", [
    ("10.3.0", "fp32", [], "builder flags"),
    ("10.3.0", "fp16", ["FP16"], "builder flags"),
    ("10.3.0", "int8", ["INT8", "FP16"], "builder flags"),
    ("11.0.0", "fp16", [], "strongly-typed (precision from the graph)"),
    ("11.0.0", "int8", [], "strongly-typed (precision from the graph)"),
])
def test_build_engine_branches_on_the_tensorrt_version(tmp_path, version, precision, flags, api):
    trt = FakeTensorRT(version)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old-cache")
    options = EngineOptions(precision=precision, min_batch=1, opt_batch=4, max_batch=8, workspace_mb=64,
                            timing_cache=cache)
    record = build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", {"image": (3, 64, 64)}, options,
                          trt=trt, gpu=GPU)
    assert trt.flags() == flags and record["builder_flags"] == flags and record["api"] == api
    assert ("network", 0) in trt.calls
    assert ("workspace", "WORKSPACE", 64 << 20) in trt.calls
    assert ("set_shape", "image", (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)) in trt.calls
    assert ("read_cache", b"old-cache") in trt.calls
    assert (tmp_path / "model.engine").read_bytes() == b"engine-bytes"
    assert cache.read_bytes() == b"timing-cache"
    assert record["tensorrt_version"] == version and record["gpu"] == GPU


def test_build_engine_reports_parser_errors(tmp_path):
    trt = FakeTensorRT("10.3.0")

    class Error:
        def desc(self):
            return "unsupported op DFT"

    class FailingParser(trt.OnnxParser):
        num_errors = 1

        def parse_from_file(self, path):
            return False

        def get_error(self, index):
            return Error()

    trt.OnnxParser = FailingParser
    with pytest.raises(RuntimeError, match="unsupported op DFT"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", {"image": (3, 64, 64)}, EngineOptions(),
                     trt=trt, gpu=GPU)
    assert not (tmp_path / "m.engine").exists()


def _graph(nodes, initializers=(), opset=20):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def test_report_flags_the_known_traps():
    from onnx import TensorProto, helper
    from mrdl_export.trt_report import check_graph, format_report

    nodes = [
        helper.make_node("DFT", ["x"], ["f"]),
        helper.make_node("RandomNormalLike", ["x"], ["n"]),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="cubic", antialias=1),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
        helper.make_node("Relu", ["x"], ["y"]),
    ]
    inits = [helper.make_tensor("scales", TensorProto.FLOAT, [2], [1.0, 2.0]),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("zp", TensorProto.INT8, [], [3])]
    report = check_graph(_graph(nodes, inits, opset=21))
    status = {o.op: o.status for o in report.ops}
    assert status["DFT"] == {"10.x": "unsupported", "11.x": "unsupported"}
    assert status["RandomNormalLike"] == {"10.x": "unsupported", "11.x": "trap"}
    assert status["Resize"]["10.x"] == "restricted" and status["DequantizeLinear"]["11.x"] == "restricted"
    assert status["Relu"] == {"10.x": "ok", "11.x": "ok"}
    assert not report.compatible("10.x") and "opset 21 outside 9..20" in report.unsupported("10.x")
    assert report.unsupported("11.x") == ["DFT"]
    text = format_report(report)
    assert "antialias" in text and "non-zero zero point" in text and "UNSUPPORTED" in text


def test_report_passes_a_clean_graph():
    from onnx import helper
    from mrdl_export.trt_report import check_graph

    report = check_graph(_graph([helper.make_node("Relu", ["x"], ["y"])]))
    assert report.compatible("10.x") and report.compatible("11.x") and report.flagged() == []


def test_parity_figures():
    from mrdl_export.parity import compare, dice_agreement

    a = np.zeros((2, 1, 4, 4), dtype=np.float32)
    b = a.copy()
    a[0, 0, :2] = 0.9  # image 0: 8 foreground pixels in the reference
    b[0, 0, :1] = 0.9  # 4 of them in the candidate
    b[1, 0, 0, 0] = 0.4  # below threshold: masks still agree (both empty)
    result = compare(a, b, source="test")
    assert result.dice_agreement == pytest.approx((2 * 4 / 12 + 1.0) / 2)
    assert result.min_dice_agreement == pytest.approx(2 / 3)
    assert result.max_abs_diff == pytest.approx(0.9) and not result.passes(atol=1e-3, min_dice=0.99)
    labels = np.array([[[0, 1, 2]]])
    assert dice_agreement(labels, labels, n_classes=3)[0] == 1.0
