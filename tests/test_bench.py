"""mrdl-bench on the tiny model: report fields, skips with reasons, parity, files, CLI and bad input.

The tiny checkpoint's export with FP32 + INT8 ONNX (conftest's, made once per session) is
benchmarked once per module with a few iterations; the other tests read that report or run small
variants.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from mrdl_bench.bench import BenchError, parse_backends, parse_batches, run_benchmark  # noqa: E402
from mrdl_apps.bench import main  # noqa: E402
from mrdl_bench.measure import LatencySummary, parity  # noqa: E402
from mrdl_bench.report import format_table  # noqa: E402
from mrdl_bench.runners import TorchRunner  # noqa: E402
from mrdl_export.parity import dice_agreement  # noqa: E402
from mrdl_runtime import BackendUnavailableError  # noqa: E402

RESULT_FIELDS = {"backend", "precision", "batch", "latency_ms", "warmup", "throughput_ips", "peak_memory_mb",
                 "memory_method", "model_size_mb", "model_file", "parity", "parity_vs_onnx_fp32", "prepost_included",
                 "gflops_achieved", "peak_fraction", "int8_peak_fraction", "speedup_vs_torch_eager", "parity_min_dice", "parity_status",
                 "speedup_unverified", "notes"}
LATENCY_FIELDS = {"p50", "p90", "p99", "mean", "stdev", "min", "max", "iterations"}


@pytest.fixture(scope="session")
def tiny_deploy(tiny_checkpoint, variants_export) -> tuple[Path, Path]:
    """(checkpoint, model dir): conftest's seeded tiny model and its FP32 + INT8 (+ FP16) export."""
    return tiny_checkpoint, variants_export.out_dir


@pytest.fixture(scope="module")
def report(tiny_deploy, tmp_path_factory):
    ckpt, model_dir = tiny_deploy
    backends = "torch-fft,torch-matmul,ort-fp32,ort-int8,ort-cuda,tensorrt"
    return run_benchmark(ckpt=ckpt, model_dir=model_dir, backends=backends, batches="1,2", images=3, warmup=1, iters=3,
                         threads=2, phase_iters=3, out=tmp_path_factory.mktemp("bench_out"), progress=False)


def test_report_has_every_field_for_every_backend_and_batch(report):
    ran = {(r.backend, r.batch) for r in report.results}
    assert ran == {(b, n) for b in ("torch-fft", "torch-matmul", "ort-fp32", "ort-int8") for n in (1, 2)}
    for result in report.results:
        data = result.to_dict()
        assert set(data) == RESULT_FIELDS
        assert set(data["latency_ms"]) == LATENCY_FIELDS
        lat = result.latency_ms
        assert lat.iterations == 3 and 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.max
        assert result.warmup["iterations"] == 1 and result.warmup["total_ms"] > 0
        assert result.throughput_ips == pytest.approx(result.batch * 1e3 / lat.mean)
        assert result.model_size_mb > 0 and Path(result.model_file).is_file()
        assert result.prepost_included is False
        assert result.gflops_achieved > 0 and 0 < result.peak_fraction
        assert result.speedup_vs_torch_eager > 0 and result.speedup_unverified is None
        assert result.parity_status == "ok"
        assert result.parity_min_dice == (0.95 if result.backend == "ort-int8" else 0.99)
    assert report.result("ort-int8", 1).precision == "int8" and report.result("ort-fp32", 1).precision == "fp32"
    assert report.result("torch-fft", 1).speedup_vs_torch_eager == pytest.approx(1.0)
    for result in report.results:  # the INT8 path's share of the measured integer GEMM peak, INT8 rows only
        expected = result.gflops_achieved / report.int8_peak["gops"] if result.precision == "int8" else None
        assert result.int8_peak_fraction == (None if expected is None else pytest.approx(expected))
    assert report.failures == [] and report.settings["source_checkpoint_matches"] is True
    assert report.flops_per_image > 0 and report.matmul_peak["gflops"] > 0
    assert report.machine["cpu_model"] and report.machine["logical_cores"] >= 1
    assert report.machine["libraries"]["onnxruntime"] and report.settings["threads"] == 2
    assert [share["batch"] for share in report.phase_share] == [1, 2]
    assert all(0 < share["share"] < 1 and 0 < share["phase_flops_share"] < 1 for share in report.phase_share)


def test_skipped_backends_carry_a_reason(report):
    skipped = {s.backend: s.reason for s in report.skipped}
    assert set(skipped) == {"ort-cuda", "tensorrt"}
    assert "CUDAExecutionProvider" in skipped["ort-cuda"]
    assert "TensorRT" in skipped["tensorrt"] or "tensorrt" in skipped["tensorrt"]
    assert "skipped tensorrt:" in format_table(report)


def test_parity_against_pytorch_fp32(report):
    for backend in ("torch-matmul", "ort-fp32"):
        p = report.result(backend, 1).parity
        assert p.reference == "torch-fft" and p.images == 3
        assert p.max_abs_diff < 1e-4 and p.dice_agreement > 0.99
    int8 = report.result("ort-int8", 1)
    assert int8.parity.max_abs_diff > 0  # quantised: not bit-equal to FP32
    assert int8.parity_vs_onnx_fp32.reference == "ort-fp32"
    assert report.result("ort-fp32", 1).parity_vs_onnx_fp32 is None


def test_files_written(report):
    files = {kind: Path(path) for kind, path in report.files.items()}
    data = json.loads(files["json"].read_text())
    assert {"settings", "machine", "flops_per_image", "matmul_peak", "results", "skipped", "phase_share"} <= set(data)
    assert len(data["results"]) == 8 and all(r["parity"] for r in data["results"])
    markdown = files["markdown"].read_text()
    assert "| backend | batch | p50 ms" in markdown and "| max\\|Δp\\| |" in markdown
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(files["json"].parent.glob(".*tmp"))  # no temporary files left behind


def test_prepost_included_is_timed_and_flagged(tiny_deploy, tmp_path):
    ckpt, model_dir = tiny_deploy
    report = run_benchmark(ckpt=ckpt, model_dir=model_dir, backends=["ort-fp32"], batches=[1], images=2,
                           warmup=1, iters=2, threads=1, include_prepost=True, progress=False)
    result = report.results[0]
    assert result.prepost_included is True and report.settings["include_prepost"] is True


def test_cli_runs_and_writes_report(tiny_deploy, tmp_path):
    ckpt, model_dir = tiny_deploy
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["--ckpt", str(ckpt), "--model-dir", str(model_dir),
                                       "--backends", "ort-fp32,tensorrt", "--batch", "1", "--images", "2",
                                       "--warmup", "0", "--iters", "2", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ort-fp32" in result.output and "skipped tensorrt:" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]


def test_help_works_without_torch_onnxruntime_or_tensorrt():
    code = ("import sys\n"
            "for name in ('torch', 'onnxruntime', 'tensorrt', 'cuda', 'onnx'):\n"
            "    sys.modules[name] = None  # any import of these now fails\n"
            "from click.testing import CliRunner\n"
            "from mrdl_apps.bench import main\n"
            "result = CliRunner().invoke(main, ['--help'])\n"
            "print(result.output)\n"
            "sys.exit(result.exit_code)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--backends" in done.stdout and "--include-prepost / --exclude-prepost" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--model-dir", "{missing}"], "does not exist"),
    (["--backends", "ort-fp32,onnx-magic"], "unknown backend"),
    (["--batch", "1,x"], "positive integers"),
    (["--batch", "0"], "positive integers"),
    (["--batch", "64"], "max_batch"),
    (["--data", "{missing}"], "does not exist"),
])
def test_cli_bad_input_is_a_clear_usage_error(tiny_deploy, tmp_path, args, message):
    ckpt, model_dir = tiny_deploy
    defaults = {"--ckpt": str(ckpt), "--model-dir": str(model_dir), "--backends": "ort-fp32",
                "--out": str(tmp_path / "o")}
    given = dict(zip(args[::2], (a.format(missing=tmp_path / "missing") for a in args[1::2])))
    argv = [item for key, value in {**defaults, **given}.items() for item in (key, value)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_parsers_and_missing_checkpoint(tiny_deploy, tmp_path):
    assert parse_backends(" ort-fp32, torch-fft,ort-fp32") == ["ort-fp32", "torch-fft"]
    assert parse_batches("1,4,8") == [1, 4, 8]
    with pytest.raises(BenchError, match="unknown backend"):
        parse_backends("")
    with pytest.raises(BenchError, match="does not exist"):
        run_benchmark(ckpt=tmp_path / "none.safetensors", model_dir=tiny_deploy[1], backends="ort-fp32")


def test_failed_torch_compile_is_skipped_with_its_reason(tiny_deploy, monkeypatch):
    import torch

    def broken_compile(model, **kwargs):
        raise RuntimeError("no backend for this op\nmore detail")

    monkeypatch.setattr(torch, "compile", broken_compile)
    runner = TorchRunner("torch-compile", ckpt=tiny_deploy[0], phase="fft", compile_model=True)
    with pytest.raises(BackendUnavailableError, match="torch.compile failed: RuntimeError: no backend for this op$"):
        runner.activate()
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer(np.zeros((1, 3, 64, 64), np.float32))


def test_measurement_helpers():
    stats = LatencySummary.from_seconds([0.001 * v for v in range(1, 101)])
    assert stats.p50 == pytest.approx(50.5) and stats.p99 == pytest.approx(99.01) and stats.iterations == 100
    a = np.zeros((2, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2] = 1
    b[0, :1] = 1  # image 0: |A| = 8, |B| = 4, overlap 4 -> Dice 2/3; image 1: both empty -> 1
    assert dice_agreement(a, b, n_classes=1).mean() == pytest.approx((2 / 3 + 1) / 2)
    probs = np.full((1, 1, 4, 4), 0.4, np.float32)
    assert parity(probs, probs + 0.05, reference_name="r").max_abs_diff == pytest.approx(0.05, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        parity(probs, probs[:, :, :2], reference_name="r")


def test_parity_with_several_classes_is_the_export_gates():
    """mrdl-bench's parity is mrdl_export.parity.compare's: Dice per foreground class, averaged."""
    from mrdl_export.parity import compare

    reference, candidate = np.zeros((1, 4, 4), np.int64), np.zeros((1, 4, 4), np.int64)
    reference[0, 0], reference[0, 1] = 1, 2
    candidate[0, 0], candidate[0, 1] = 1, 1  # class 1: |A| 4, |B| 8, overlap 4 -> 2/3; class 2: 4 vs 0 -> 0
    one_hot = np.eye(3, dtype=np.float32)  # (label, class)
    p_reference = one_hot[reference].transpose(0, 3, 1, 2)  # (1, 3, 4, 4)
    p_candidate = one_hot[candidate].transpose(0, 3, 1, 2)
    result = parity(p_candidate, p_reference, reference_name="r")
    assert result.dice_agreement == pytest.approx((2 / 3 + 0) / 2)
    assert result.dice_agreement == compare(p_reference, p_candidate, source="r").dice_agreement
