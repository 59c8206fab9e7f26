"""Hostile and careless use of mrdl-export and mrdl-bench: each case asserts the exact outcome.

``--force`` on folders that are not an mrdl deploy directory (the training run, a parent of the
checkpoint, the data folder, foreign files, a symlink), leftovers of killed exports, real SIGKILL
and SIGINT of an export, malformed checkpoints, and mrdl-bench on a model directory that is not
the checkpoint's (another seed, a changed output, a changed file). Every refusal leaves every file
as it was and writes nothing beside ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers.checkpoints import rewritten_checkpoint  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # module-scoped exports take seconds of CPU
EXPORT = [sys.executable, "-c", "from mrdl_apps.export import main; main()"]


def _balanced_checkpoint(path: Path, tiny_config, features, *, seed: int) -> Path:
    """A seeded tiny model with its head shifted so about half of each synthetic image is foreground.

    Untrained tiny models predict background everywhere, where any two models' masks agree; the
    balanced ones make masks that depend on the weights, so a wrong model shows in the Dice agreement.
    """
    from mrdl.checkpoint import save_checkpoint
    from mrdl.model import create_model
    from mrdl_bench.inputs import load_inputs

    model = create_model(tiny_config, prompt_features=features, seed=seed).eval()
    images = torch.from_numpy(load_inputs(size=tiny_config.model.image_size, count=8).tensors)
    with torch.no_grad():
        model.decoder.head.bias -= model(images).logits.median()
    return save_checkpoint(path, model)


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> the sha256 of its bytes ("dir" for folders, "link -> target" for links)."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            state[key] = "dir"
        else:
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _export_cli(*args) -> Result:
    from mrdl_apps.export import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _copy(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    return target


# ----------------------------------------------------------------------------- --force and --out

def test_force_keeps_the_training_run_that_holds_the_checkpoint(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "best.safetensors")
    shutil.copy(tiny_checkpoint, run / "last.safetensors")
    (run / "metrics.csv").write_text("epoch,val_dice\n0,0.5\n")
    (run / "resume.json").write_text("{}")
    before = _snapshot(tmp_path)
    result = _export_cli("--ckpt", run / "best.safetensors", "--out", run, "--force")
    assert result.exit_code == 1
    assert result.output.startswith(f"mrdl-export: error: --out {run} holds the checkpoint being exported "
                                    f"{run / 'best.safetensors'}")
    assert f"e.g. {run / 'deploy'}" in result.output and "Traceback" not in result.output
    assert _snapshot(tmp_path) == before


def test_force_refuses_the_current_folder_holding_the_checkpoint(tmp_path, tiny_checkpoint, monkeypatch):
    shutil.copy(tiny_checkpoint, tmp_path / "best.safetensors")
    before = _snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _export_cli("--ckpt", "best.safetensors", "--out", ".", "--force")
    assert result.exit_code == 1
    assert f"--out {tmp_path} holds the checkpoint being exported best.safetensors" in result.output
    assert _snapshot(tmp_path) == before and not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))


def test_force_refuses_a_parent_of_the_checkpoint_folder(tmp_path, tiny_checkpoint):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "best.safetensors")
    before = _snapshot(tmp_path)
    result = _export_cli("--ckpt", run / "best.safetensors", "--out", tmp_path / "runs", "--force")
    assert result.exit_code == 1
    assert f"--out {tmp_path / 'runs'} holds the checkpoint being exported" in result.output
    assert _snapshot(tmp_path) == before


def test_force_refuses_a_symlink_to_the_checkpoint_folder(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "best.safetensors")
    (tmp_path / "alias").symlink_to(run)
    before = _snapshot(tmp_path)
    result = _export_cli("--ckpt", run / "best.safetensors", "--out", tmp_path / "alias", "--force")
    assert result.exit_code == 1 and "holds the checkpoint being exported" in result.output  # resolved paths
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["equal", "parent"])
def test_force_refuses_the_data_folder(tmp_path, tiny_checkpoint, where):
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for index in range(2):
        Image.new("RGB", (32, 32), (index * 90, 40, 200)).save(data / f"{index}.png")
    out = data if where == "equal" else tmp_path
    before = _snapshot(tmp_path)
    result = _export_cli("--ckpt", tiny_checkpoint, "--out", out, "--data", data, "--force")
    assert result.exit_code == 1
    assert f"--out {out} {'is' if where == 'equal' else 'holds'} the --data folder {data}" in result.output
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("case, message", [
    ("foreign_file", "also holds notes.txt; nothing was touched"),
    ("subfolder", "also holds masks/; nothing was touched"),
    ("symlinked_artifact", "also holds model.fp16.onnx; nothing was touched"),
    ("no_manifest", "has no mrdl model.json; nothing was touched"),
    ("other_format", "has no mrdl model.json; nothing was touched"),
])
def test_force_refuses_a_folder_that_is_not_only_an_mrdl_deploy_directory(tmp_path, tiny_checkpoint, model_dir, case,
                                                                           message):
    out = _copy(model_dir, tmp_path / "out")
    if case == "foreign_file":
        (out / "notes.txt").write_text("my notes")
    elif case == "subfolder":
        (out / "masks").mkdir()
        (out / "masks" / "a.png").write_bytes(b"png")
    elif case == "symlinked_artifact":
        (tmp_path / "elsewhere.onnx").write_bytes(b"someone else's file")
        (out / "model.fp16.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    elif case == "no_manifest":
        (out / "model.json").unlink()
    else:
        (out / "model.json").write_text(json.dumps({"format": "other-tool/1", "artifacts": {}}))
    before = _snapshot(tmp_path)
    result = _export_cli("--ckpt", tiny_checkpoint, "--out", out, "--force")
    assert result.exit_code == 1
    assert result.output.startswith(f"mrdl-export: error: --force replaces only a deploy directory written by "
                                    f"mrdl-export, and {out}")
    assert message in result.output
    assert _snapshot(tmp_path) == before


def test_out_that_is_a_symlink_is_refused(tmp_path, tiny_checkpoint):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    before = _snapshot(tmp_path)
    result = _export_cli("--ckpt", tiny_checkpoint, "--out", tmp_path / "link", "--force")
    assert result.exit_code == 1 and f"--out {tmp_path / 'link'} is a symbolic link" in result.output
    assert _snapshot(tmp_path) == before


def test_force_replaces_an_mrdl_deploy_directory(tmp_path, tiny_checkpoint, model_dir):
    out = _copy(model_dir, tmp_path / "out")
    old_id = json.loads((out / "model.json").read_text())["export_id"]
    result = _export_cli("--ckpt", tiny_checkpoint, "--out", out, "--force", "--parity-images", "2", "--fp16")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["export_id"] != old_id
    assert sorted(p.name for p in out.iterdir()) == ["model.fp16.onnx", "model.json", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.partial-* / .out.old-* left


def test_an_empty_out_folder_is_used_without_force(tmp_path, tiny_checkpoint):
    (tmp_path / "out").mkdir()
    result = _export_cli("--ckpt", tiny_checkpoint, "--out", tmp_path / "out", "--parity-images", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.onnx"]


# ----------------------------------------------------------------------------- leftovers, SIGKILL, SIGINT

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    return child.pid


def test_leftovers_are_removed_only_when_dead_and_all_ours(tmp_path):
    from mrdl_export.publish import remove_leftovers

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = _dead_pid()
        folders = {
            "dead_partial": tmp_path / f".deploy.partial-{dead}",  # killed mid-write: artifact + atomic temp
            "dead_old": tmp_path / f".deploy.old-{dead}",  # killed while replacing: a whole old deploy dir
            "live_partial": tmp_path / f".deploy.partial-{sleeper.pid}",  # a running export's folder
            "dead_foreign": tmp_path / f".deploy.old-{dead + 1000000}",  # someone's notes inside
            "other_out": tmp_path / f".other.partial-{dead}",  # another --out's leftover
        }
        for folder in folders.values():
            folder.mkdir()
            (folder / "model.onnx").write_bytes(b"onnx")
        (folders["dead_partial"] / ".0a1b2c3d.tmp").write_bytes(b"half")  # atomic_path's temporary name
        (folders["dead_old"] / "model.json").write_text(json.dumps({
            "format": "mrdl-deploy/2", "artifacts": {"fp32": {"file": "custom.onnx", "precision": "fp32"}}}))
        (folders["dead_old"] / "custom.onnx").write_bytes(b"listed by its model.json")
        (folders["dead_foreign"] / "notes.txt").write_text("mine")
        removed = remove_leftovers(tmp_path / "deploy")
    finally:
        sleeper.kill()
        sleeper.wait(timeout=60)
    assert sorted(removed) == sorted([folders["dead_partial"], folders["dead_old"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        folders[k].name for k in ("live_partial", "dead_foreign", "other_out"))


def _start_export(ckpt: Path, out: Path, *extra: str, wrap=list) -> subprocess.Popen:
    return subprocess.Popen(wrap([*EXPORT, "--ckpt", str(ckpt), "--out", str(out), "--int8", "--calib-images", "8",
                                  "--parity-images", "8", *extra]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"export ended before {path} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def test_killed_export_leaves_nothing_the_next_export_does_not_clean(tmp_path, tiny_checkpoint):
    from mrdl_export import export_model

    out = tmp_path / "deploy"
    process = _start_export(tiny_checkpoint, out)
    partial = tmp_path / f".deploy.partial-{process.pid}"
    try:
        _wait_for(partial / "model.onnx", process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert partial.is_dir() and not out.exists()  # what a real kill leaves
    export_model(tiny_checkpoint, out, parity_images=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]


def test_sigint_exits_130_and_leaves_the_old_deploy_directory_whole(tmp_path, tiny_checkpoint, model_dir,
                                                                   interruptible):
    out = _copy(model_dir, tmp_path / "deploy")
    before = _snapshot(tmp_path)
    process = _start_export(tiny_checkpoint, out, "--force", wrap=interruptible)
    try:
        _wait_for(tmp_path / f".deploy.partial-{process.pid}" / "model.onnx", process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert f"mrdl-export: interrupted; nothing half-written is left under {out}" in stderr
    assert "Traceback" not in stderr
    assert _snapshot(tmp_path) == before  # the old deploy directory, byte for byte, and nothing beside it


# ----------------------------------------------------------------------------- malformed checkpoints

@pytest.mark.parametrize("case, message", [("wrong_shape", "decoder.head.bias"),
                                           ("missing_tensor", "decoder.head.weight")])
def test_malformed_checkpoint_is_an_error_line(tmp_path, tiny_checkpoint, case, message):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mrdl.tagged_file import METADATA_DIGEST_KEY, metadata_digest, tensors_digest

    with safe_open(str(tiny_checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    if case == "wrong_shape":
        state["decoder.head.bias"] = torch.zeros(5)
    else:
        del state["decoder.head.weight"]
    metadata["mrdl.tensors_sha256"] = tensors_digest(state)  # a well-formed file whose tensors do not fit
    metadata[METADATA_DIGEST_KEY] = metadata_digest(metadata)  # its metadata re-signed as well
    ckpt = tmp_path / "bad.safetensors"
    save_file(state, str(ckpt), metadata=metadata)
    result = _export_cli("--ckpt", ckpt, "--out", tmp_path / "deploy")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("mrdl-export: error: ") and message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]




def _head_weight(ckpt: Path) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as handle:
        return handle.get_tensor("decoder.head.weight").clone()


def _one_error_line(result: Result, tmp_path: Path, *kept: str) -> str:
    """The run's one ``mrdl-export: error:`` line, after checking exit 1, no traceback and nothing written."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("mrdl-export: error: ") == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    return next(line for line in result.output.splitlines() if line.startswith("mrdl-export: error: "))


@pytest.mark.parametrize("case, message", [
    ("inf", "tensor 'decoder.head.weight' holds 1 inf or NaN value"),
    ("nan", "tensor 'decoder.head.weight' holds 1 inf or NaN value"),
    ("float64 beyond float32", "tensor 'decoder.head.weight' holds 1 inf or NaN value (as torch.float32)"),
    ("bool", "tensor 'decoder.head.weight' has dtype torch.bool, expected torch.float32"),
    ("int64", "tensor 'decoder.head.weight' has dtype torch.int64, expected torch.float32"),
])
def test_non_finite_or_non_float_weights_are_refused_by_name(tmp_path, tiny_checkpoint, case, message):
    weight = _head_weight(tiny_checkpoint)
    if case in ("inf", "nan"):
        weight.view(-1)[0] = float(case)
    elif case == "float64 beyond float32":
        weight = weight.double()
        weight.view(-1)[0] = 1e300
    else:
        weight = weight > 0 if case == "bool" else (weight * 100).long()
    ckpt = rewritten_checkpoint(tiny_checkpoint, tmp_path / "bad.safetensors", tensors={"decoder.head.weight": weight})
    result = _export_cli("--ckpt", ckpt, "--out", tmp_path / "deploy", "--parity-images", "2")
    assert message in _one_error_line(result, tmp_path, "bad.safetensors")


@pytest.mark.parametrize("config, message", [
    ('{"model": 5}', "unreadable config: model must be a JSON object"),
    ("[]", "unreadable config: a config must be a JSON object"),
    ('{"model": {"image_size": 1048576}}', "unreadable config: model.image_size must be in [32, 4096], got 1048576"),
    ('{"model": {"text": {"width": 1e9}}}', "unreadable config: model.text.width must be an integer, got 1000000000.0"),
])
def test_malformed_config_metadata_is_one_error_line(tmp_path, tiny_checkpoint, config, message):
    ckpt = rewritten_checkpoint(tiny_checkpoint, tmp_path / "bad.safetensors", config=config)
    result = _export_cli("--ckpt", ckpt, "--out", tmp_path / "deploy")
    assert message in _one_error_line(result, tmp_path, "bad.safetensors")


def test_config_sizes_the_tensors_lack_are_refused_before_allocating(tmp_path, tiny_checkpoint, tiny_config):
    """Sizes within the limits that the file's tensors do not have: 137 GB of learnable features, never allocated."""
    config = tiny_config.to_dict()
    config["model"].update(image_size=4096, base_width=512, heads=8, num_learnable=1024)
    ckpt = rewritten_checkpoint(tiny_checkpoint, tmp_path / "bad.safetensors", config=json.dumps(config))
    result = _export_cli("--ckpt", ckpt, "--out", tmp_path / "deploy")
    line = _one_error_line(result, tmp_path, "bad.safetensors")
    assert "tensor 'learnable_features' has shape (4, 16, 8), expected (1024, 65536, 512)" in line


def test_a_checkpoint_folder_is_called_a_directory(tmp_path):
    (tmp_path / "best.safetensors").mkdir()
    result = _export_cli("--ckpt", tmp_path / "best.safetensors", "--out", tmp_path / "deploy")
    assert "is a directory; expected a .safetensors file" in _one_error_line(result, tmp_path, "best.safetensors")


@pytest.mark.parametrize("option", [("--int8-target", "tensorrt"), ("--int8-target", "onnxruntime"),
                                    ("--int8-keep-fp32", "decoder"), ("--calib-data", "."),
                                    ("--calib-images", "32"), ("--calib-method", "minmax"),
                                    ("--int8-max-dice-drop", "0.5"), ("--int8-min-dice", "0.9")])
def test_int8_only_options_without_int8_are_refused_even_at_their_default(tmp_path, tiny_checkpoint, option):
    result = _export_cli("--ckpt", tiny_checkpoint, "--out", tmp_path / "deploy", *option)
    assert f"mrdl-export: error: {option[0]} needs --int8" in _one_error_line(result, tmp_path)


@pytest.mark.parametrize("option, limit", [(("--max-batch", "4097"), "1<=x<=4096"), (("--opset", "17"), "18<=x<=20")])
def test_out_of_range_options_are_refused_before_any_work(tmp_path, tiny_checkpoint, option, limit):
    result = _export_cli("--ckpt", tiny_checkpoint, "--out", tmp_path / "deploy", *option)
    assert result.exit_code == 2 and f"{option[1]} is not in the range {limit}" in result.output
    assert not list(tmp_path.iterdir())


def test_constant_masks_pass_the_gate_with_a_warning(tmp_path, tiny_checkpoint):
    """A head bias of 1e30 makes every probability 1: the export passes, but says its gate proved little."""
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint), framework="pt") as handle:
        bias = handle.get_tensor("decoder.head.bias") + 1e30
    ckpt = rewritten_checkpoint(tiny_checkpoint, tmp_path / "huge.safetensors", tensors={"decoder.head.bias": bias})
    result = _export_cli("--ckpt", ckpt, "--out", tmp_path / "deploy", "--parity-images", "2", "--print")
    assert result.exit_code == 0, result.output
    warning = "every mask is class 1 everywhere (every probability 1) on all 2 parity images (synthetic)"
    assert f"mrdl-export: warning: {ckpt}: {warning}" in result.stderr
    assert any(line.startswith("warning: ") and warning in line for line in result.stdout.splitlines())


# ----------------------------------------------------------------------------- mrdl-bench on the wrong model

@pytest.fixture(scope="module")
def balanced_models(tmp_path_factory, tiny_config, tiny_prompt_features):
    """Two balanced checkpoints (seeds 0 and 1) and the deploy directory of each."""
    from mrdl_export import export_model

    root = tmp_path_factory.mktemp("balanced")
    models = {}
    for seed in (0, 1):
        ckpt = _balanced_checkpoint(root / f"seed{seed}.safetensors", tiny_config, tiny_prompt_features, seed=seed)
        models[seed] = (ckpt, export_model(ckpt, root / f"deploy{seed}", parity_images=2).out_dir)
    return models


def _bench(ckpt: Path, model_dir: Path, out: Path, backends: str = "torch-fft,ort-fp32"):
    from mrdl_apps.bench import main

    return CliRunner().invoke(main, [
        "--ckpt", str(ckpt), "--model-dir", str(model_dir), "--backends", backends, "--batch", "1", "--images", "4",
        "--warmup", "0", "--iters", "2", "--phase-iters", "1", "--threads", "1", "--out", str(out)])


def test_bench_flags_a_model_dir_exported_from_another_checkpoint(tmp_path, balanced_models):
    ckpt, _ = balanced_models[0]
    _, other_dir = balanced_models[1]
    result = _bench(ckpt, other_dir, tmp_path / "report")
    assert result.exit_code == 1, result.output + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mrdl-bench: error: ")]
    assert len(errors) == 2
    assert errors[0].startswith(f"mrdl-bench: error: SOURCE MISMATCH: {other_dir} was exported from ")
    assert errors[1].startswith("mrdl-bench: error: PARITY FAILED: ort-fp32 (fp32) masks agree with torch-fft at "
                                "mask Dice ")
    report = json.loads((tmp_path / "report" / "bench.json").read_text())
    rows = {row["backend"]: row for row in report["results"]}
    assert rows["ort-fp32"]["parity_status"] == "PARITY FAILED" and rows["ort-fp32"]["parity"]["dice_agreement"] < 0.9
    assert rows["ort-fp32"]["speedup_vs_torch_eager"] is None and rows["ort-fp32"]["speedup_unverified"] > 0
    assert rows["torch-fft"]["parity_status"] == "ok" and rows["torch-fft"]["speedup_vs_torch_eager"] == 1.0
    assert report["settings"]["source_checkpoint_matches"] is False and len(report["failures"]) == 2
    table_row = next(line for line in result.stdout.splitlines() if line.startswith("ort-fp32"))
    assert table_row.endswith("PARITY FAILED") and f"({rows['ort-fp32']['speedup_unverified']:.2f}x)" in table_row
    markdown = (tmp_path / "report" / "bench.md").read_text()
    assert "**PARITY FAILED: ort-fp32" in markdown and "| PARITY FAILED |" in markdown


def test_bench_flags_a_backend_whose_output_differs(tmp_path, balanced_models, monkeypatch):
    from mrdl_bench import runners
    from mrdl_bench.bench import run_benchmark

    ckpt, model_dir = balanced_models[0]
    original = runners.RuntimeRunner._infer
    monkeypatch.setattr(runners.RuntimeRunner, "_infer", lambda self, batch: 1.0 - original(self, batch))
    report = run_benchmark(ckpt=ckpt, model_dir=model_dir, backends="torch-fft,ort-fp32", images=4, warmup=0,
                           iters=2, phase_iters=1, threads=1, progress=False)
    fp32 = report.result("ort-fp32", 1)
    assert fp32.parity_status == "PARITY FAILED" and fp32.parity.dice_agreement < 0.1
    assert fp32.speedup_vs_torch_eager is None and fp32.speedup_unverified > 0
    assert len(report.failures) == 1 and report.failures[0].startswith("PARITY FAILED: ort-fp32 (fp32)")
    assert report.settings["source_checkpoint_matches"] is True


def test_bench_refuses_a_changed_model_file(tmp_path, balanced_models):
    ckpt, model_dir = balanced_models[0]
    changed = _copy(model_dir, tmp_path / "deploy")
    data = bytearray((changed / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the weights
    (changed / "model.onnx").write_bytes(bytes(data))
    result = _bench(ckpt, changed, tmp_path / "report", backends="ort-fp32")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("mrdl-bench: error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"mrdl-bench: error: {changed / 'model.onnx'}: sha256 ")
    assert "differs from the" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "report").exists()
