"""Multi-process training under torchrun (gloo, CPU): the same update as one process, files written once,
exact resume under two processes, and a killed rank ends the whole job with a non-zero exit.

Every torchrun job here is ``python -m torch.distributed.run --standalone --nproc-per-node 2`` running
a small launcher that records, per rank, every file the rank renames into place (all run files are
written that way) and its pid, then runs ``mrdl train`` as ``python -m mrdl_apps`` would.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mrdl.checkpoint import read_checkpoint
from mrdl.data.embeddings import compute_embeddings, load_embeddings
from mrdl.model import create_model
from mrdl.data.synthetic import write_synthetic_dataset
from mrdl.resume import RESUME, ResumeError, read_train_metadata
from helpers.training import resume_run, train_run

pytestmark = [pytest.mark.filterwarnings("ignore::mrdl.text.RandomTextTowerWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

EPOCHS = 4  # 8 images, global batch 4: 2 steps per epoch, 8 optimizer steps
LAUNCHER = '''
import os, runpy, sys
from pathlib import Path

log_dir = Path(sys.argv[1])
rank = os.environ["RANK"]
(log_dir / f"pid.{rank}").write_text(str(os.getpid()))
log = open(log_dir / f"writes.{rank}", "a")
real_replace = os.replace

def recording_replace(src, dst, *args, **kwargs):
    log.write(f"{Path(dst).name}\\n")
    log.flush()
    return real_replace(src, dst, *args, **kwargs)

os.replace = recording_replace
sys.argv = ["mrdl"] + sys.argv[2:]
runpy.run_module("mrdl_apps", run_name="__main__")
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    root = write_synthetic_dataset(folder / "syn", n_train=8, n_val=2, size=64)
    return root, compute_embeddings(root, tiny_config, out=folder / "text.safetensors", random_init=True)


def _command(data, out: Path, *extra: str) -> list[str]:
    root, embeddings = data
    return ["train", "--config", "tiny", "--data", str(root), "--embeddings", str(embeddings), "--out", str(out),
            "--batch-size", "4", "--epochs", str(EPOCHS), "--lr-period", str(EPOCHS), "--seed", "5", "--threads", "1",
            *extra]


def _torchrun(log_dir: Path, arguments: list[str], **popen) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    launcher = log_dir / "launch.py"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(launcher), str(log_dir), *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen)


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return output


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data) -> tuple[Path, Path, str]:
    """An uninterrupted 2-process run: (run folder, launcher log folder, output)."""
    folder = tmp_path_factory.mktemp("ddp")
    process = _torchrun(folder / "logs", _command(data, folder / "run"))
    output = _finish(process)
    assert process.returncode == 0, output
    return folder / "run", folder / "logs", output


def _parameters(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = read_checkpoint(path)
    return {k: v for k, v in checkpoint.state_dict.items() if not k.endswith(("running_mean", "running_var",
                                                                              "num_batches_tracked"))}


def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_two_processes_compute_the_single_process_update(tmp_path: Path, tiny_config, data, two_process_run):
    """Weights after 8 steps equal one process's with the same global batch (4) split into 2 micro-batches.

    Two ranks with 2 images each and one process with --accumulate 2 see the same shards of every
    global batch (rank r / micro-batch r), draw the same sampling noise (seeded per step and shard)
    and average the same two gradients. The tolerance is zero, bit for bit: DDP's mean (a + b) / 2
    and accumulation's a / 2 + b / 2 round identically (halving is exact in binary floating point
    and a sum of two terms has one order), and both sides run the same kernels on the same shard
    sizes with one thread. (With more than two shards the summation order would differ and a
    tolerance of a few float32 ulps per step would be needed.) BatchNorm's running statistics are
    left out: DDP keeps rank 0's (updated once per step from its shard), one process updates them
    per micro-batch; they only affect eval mode.
    """
    run, logs, output = two_process_run
    _, embeddings = data
    single = train_run(tiny_config, data, tmp_path / "single", epochs=EPOCHS, lr_period=EPOCHS, batch_size=4,
                       accumulate=2, seed=5)
    assert single.epochs_completed == EPOCHS and single.history[-1]["step"] == 2 * EPOCHS
    ddp, one = _parameters(run / "last.safetensors"), _parameters(single.last_checkpoint)
    assert ddp.keys() == one.keys()
    worst = max(float((ddp[k] - one[k]).abs().max()) for k in ddp)
    print(f"largest weight difference, 2 processes vs 1 process with accumulate=2: {worst:.3g}")
    assert worst == 0.0, worst
    initial = create_model(tiny_config, prompt_features=load_embeddings(embeddings, tiny_config).prompt, seed=5)
    moved = max(float((ddp[k] - initial.state_dict()[k]).abs().max()) for k in ddp)
    assert moved > 1e-3, moved  # 8 AdamW steps of lr ~1e-3 moved the weights: the equality is not vacuous
    ddp_rows, one_rows = _metrics(run), _metrics(single.out_dir)
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in one_rows] == [str(2 * e) for e in range(1, EPOCHS + 1)]
    for a, b in zip(ddp_rows, one_rows):  # the training loss is averaged over both ranks' samples
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-3)
    # Rank 0 wrote every file, once per epoch, in a single process's order; rank 1 wrote nothing.
    per_epoch = ["best.safetensors", "metrics.csv", "curves.png", "last.safetensors", RESUME, "run.json"]
    writes = (logs / "writes.0").read_text().split()
    assert writes[:2] == [RESUME, "run.json"] and 1 <= writes.count("best.safetensors") <= EPOCHS
    assert [w for w in writes[2:] if w != "best.safetensors"] == per_epoch[1:] * EPOCHS
    assert not (logs / "writes.1").exists() or (logs / "writes.1").read_text() == ""
    provenance = read_checkpoint(run / "last.safetensors").provenance
    assert provenance["processes"] == 2 and provenance["global_batch"] == 4 and provenance["accumulate"] == 1
    assert "2 process(es) x 1 accumulation step(s), 2 image(s) per forward pass" in output


def test_killed_rank_fails_the_job_and_resume_under_two_processes_is_exact(tmp_path: Path, data, two_process_run):
    reference, _, _ = two_process_run
    run, logs = tmp_path / "run", tmp_path / "logs"
    process = _torchrun(logs, _command(data, run))
    try:
        deadline = time.monotonic() + 180
        while True:  # wait until epoch 1 is committed, then kill rank 1 mid-run
            assert process.poll() is None, "the job ended before rank 1 could be killed:\n" + process.communicate()[0]
            assert time.monotonic() < deadline, "the job committed no epoch in 180 s"
            try:
                if read_train_metadata(run)["progress"]["epoch"] >= 1:
                    break
            except ResumeError:
                pass
            time.sleep(0.05)
        killed_at = time.monotonic()
        os.kill(int((logs / "pid.1").read_text()), signal.SIGKILL)
        output = _finish(process, timeout=120)
    finally:
        process.kill()
    assert process.returncode != 0, output
    assert time.monotonic() - killed_at < 60  # torchrun stopped rank 0 instead of letting it wait for rank 1
    saved = read_train_metadata(run)["progress"]["epoch"]
    assert 1 <= saved < EPOCHS, saved

    resumed = _torchrun(tmp_path / "logs_resume", ["train", "--out", str(run), "--resume", "--threads", "1"])
    output = _finish(resumed)
    assert resumed.returncode == 0, output
    for name in ("last.safetensors", "best.safetensors"):
        a, b = read_checkpoint(reference / name).state_dict, read_checkpoint(run / name).state_dict
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _metrics(reference) == _metrics(run)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")
def test_cuda_mixed_precision_run_trains_and_resumes(tmp_path: Path, tiny_config, data):
    """One CUDA process: autocast (bf16, or fp16 with a GradScaler), channels-last, pinned workers; resume is exact."""
    from mrdl.distributed import setup
    from mrdl.train import Hardware

    hardware = Hardware(device="cuda", workers=2)
    kwargs = dict(batch_size=4, seed=1, hardware=hardware, dist=setup("cuda"), lr_period=3)
    lines: list[str] = []
    straight = train_run(tiny_config, data, tmp_path / "straight", epochs=3, on_start=lines.append, **kwargs)
    assert straight.epochs_completed == 3 and straight.samples_per_s > 0
    assert "cuda:0, " in lines[0] and ("bfloat16" in lines[0] or "float16" in lines[0])
    capped = train_run(tiny_config, data, tmp_path / "resumed", epochs=1, **kwargs)
    assert capped.epochs_completed == 1
    resumed = resume_run(tmp_path / "resumed", epochs=3, hardware=hardware, dist=kwargs["dist"])
    a, b = read_checkpoint(straight.last_checkpoint).state_dict, read_checkpoint(resumed.last_checkpoint).state_dict
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)  # cuDNN may pick other kernels
