"""The README's main job, end to end on the tiny config: every stage leaves its artefact."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mrdl_apps.cli import main


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--config", "tiny", "--epochs", "1", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "RANDOMLY INITIALISED" in result.output  # the random text tower is announced
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] and summary["epochs"] == 1
    assert summary["export"]["parity"]["fp32"]["dice_agreement"] >= 0.999
    assert set(summary["export"]["parity"]) == {"fp32", "int8"}
    for artefact in ("train/best.safetensors", "train/curves.png", "evaluate/overlays.png", "evaluate/per_image.csv",
                     "deploy/model.onnx", "deploy/model.int8.onnx", "deploy/model.json", "bench/bench.png",
                     "bench/bench.json", "REPORT.md"):
        assert (out / artefact).is_file(), artefact
    report = (out / "REPORT.md").read_text()
    assert "ort-int8" in report and "torch-fft" in report
    assert f"report: {(out / 'REPORT.md').resolve()}" in result.output


def test_cli_lists_every_subcommand():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "embed-text", "evaluate", "export", "predict", "train"):
        assert command in result.output
