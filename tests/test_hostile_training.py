"""Hostile and careless inputs to training, checkpoints and text: each case ends in one exact outcome.

Cases: no code path can unpickle (source scan, and a resume with unpickling disabled; an old pickle
state is refused unread); a kill before any write of a run leaves a resumable run equal to an
uninterrupted one; a new run never clobbers an existing one; SIGINT exits 130 with the resume
command; description tables are bounded (unzipped size, file size, rows, characters per cell);
checkpoints with a wrong-shaped or missing tensor and pickle or foreign CLIP weights get a clear error.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from helpers.training import resume_run, train_run
from mrdl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mrdl_apps.cli import main
from mrdl.data.embeddings import compute_embeddings
from mrdl.data.synthetic import write_synthetic_dataset
from mrdl.resume import LEGACY_STATE, RESUME, ResumeError, read_train_metadata
from mrdl.run_folder import RUN_FILES, RunExistsError
from mrdl.tagged_file import tensors_digest

pytestmark = [pytest.mark.filterwarnings("ignore::mrdl.text.RandomTextTowerWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

SOURCES = ("mrdl", "export", "runtime", "benchmarks", "apps")


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    root = write_synthetic_dataset(folder / "syn", n_train=4, n_val=2, size=64)
    return root, compute_embeddings(root, tiny_config, out=folder / "text.safetensors")


def _train(tiny_config, data, out: Path, **kwargs):
    return train_run(tiny_config, data, out, **kwargs)


def _resume(out: Path):
    return resume_run(out)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same_run(a: Path, b: Path) -> None:
    """Two run folders hold bit-identical checkpoints and identical metrics (timings aside)."""
    for name in ("best.safetensors", "last.safetensors"):
        x, y = _tensors(a / name), _tensors(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    drop = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731  (seconds column)
    assert drop((a / "metrics.csv").read_text()) == drop((b / "metrics.csv").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_config, data) -> tuple[Path, list[str]]:
    """An uninterrupted one-epoch run, and the run-folder files it wrote, in write order."""
    out = tmp_path_factory.mktemp("straight") / "run"
    writes: list[str] = []
    replace = os.replace

    def recording(src, dst, *args, **kwargs):
        if Path(dst).parent == out:
            writes.append(Path(dst).name)
        return replace(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", recording)
        _train(tiny_config, data, out, epochs=1, seed=3)
    return out, writes


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in training catches it."""


@contextmanager
def _killed_before_write(out: Path, number: int) -> Iterator[None]:
    """Raise :class:`Killed` instead of the ``number``-th rename of a finished file into ``out`` (1-based)."""
    replace, count = os.replace, 0

    def kill(src, dst, *args, **kwargs):
        nonlocal count
        if Path(dst).parent == out:
            count += 1
            if count == number:
                raise Killed
        return replace(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", kill)
        yield


# --- no pickle anywhere ------------------------------------------------------------------------------

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve"}


def unpickling_calls(source: str) -> list[str]:
    """Every construct in ``source`` that can unpickle: pickle-family imports, torch.load, allow_pickle=True, ..."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            names = {a.name for a in node.names}
            if top in _PICKLE_MODULES or (top == "torch" and "load" in names) or \
                    (top == "open_clip" and names & {"load_state_dict", "load_checkpoint"}):
                found.append(f"from {node.module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Call):
            call = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if call in {"torch.load", "torch.jit.load", "torch.serialization.load", "pd.read_pickle",
                        "pandas.read_pickle"} or call.split(".")[0] in _PICKLE_MODULES:
                found.append(call)
            if "weights_only" in keywords:
                found.append(f"{call}(weights_only=...)")
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{call}(allow_pickle=...)")
            if call.endswith(("create_model", "create_model_and_transforms")) and "pretrained" in keywords:
                found.append(f"{call}(pretrained=...)  # open_clip torch.loads .bin weights")
    return found


def test_no_code_path_can_unpickle(repo_root):
    planted = ("import pickle\nfrom torch import load\nimport torch, numpy as np\ntorch.load('x', weights_only=False)\n"
               "np.load('x', allow_pickle=True)\nfrom open_clip.factory import load_state_dict\n"
               "open_clip.create_model('ViT-B-32', pretrained='openai')\n")
    assert len(unpickling_calls(planted)) == 7  # the scanner sees every form it looks for
    offenders = {}
    for folder in SOURCES:
        for path in sorted((repo_root / folder).rglob("*.py")):
            if calls := unpickling_calls(path.read_text()):
                offenders[str(path.relative_to(repo_root))] = calls
    assert offenders == {}


def test_resume_never_unpickles(tmp_path: Path, tiny_config, data, straight, monkeypatch):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / LEGACY_STATE).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ResumeError, match=r"older mrdl whose resumable state, last\.state\.pt, is a pickle file; "
                                          r"mrdl never unpickles files"):
        _resume(legacy)
    assert not marker.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    out = tmp_path / "run"
    with _killed_before_write(out, 7), pytest.raises(Killed):  # the 7th write is epoch 1's resume.safetensors
        _train(tiny_config, data, out, epochs=1, seed=3)
    assert read_train_metadata(out)["progress"]["epoch"] == 0  # killed before epoch 1 was committed
    assert _resume(out).epochs_completed == 1  # state alone restores weights, optimizer, scheduler, RNG
    _same_run(straight[0], out)


# --- a kill at any instant ---------------------------------------------------------------------------

def test_kill_before_any_write_leaves_a_resumable_run(tmp_path: Path, tiny_config, data, straight):
    reference, writes = straight
    assert writes == [RESUME, "run.json", "best.safetensors", "metrics.csv", "curves.png", "last.safetensors",
                      RESUME, "run.json"]
    for index, name in enumerate(writes):
        out = tmp_path / f"killed_before_write_{index}_{name}"
        with _killed_before_write(out, index + 1), pytest.raises(Killed):
            _train(tiny_config, data, out, epochs=1, seed=3)
        if index == 0:  # killed before any run file existed: nothing to resume, and a new run is allowed
            assert not [f for f in RUN_FILES if (out / f).exists()]
            with pytest.raises(ResumeError, match=f"expected {RESUME} there"):
                _resume(out)
            _train(tiny_config, data, out, epochs=1, seed=3)
        else:
            assert _resume(out).epochs_completed == 1
        _same_run(reference, out)
        assert not list(out.glob(".*.tmp")), index


# --- an existing run is never clobbered --------------------------------------------------------------

def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_new_run_refuses_an_existing_run_folder(tmp_path: Path, tiny_config, data):
    out = tmp_path / "run"
    _train(tiny_config, data, out, epochs=1, seed=3)
    (out / "notes.txt").write_text("mine")
    (out / "other.safetensors").write_bytes(b"not ours")
    before = _digests(out)
    with pytest.raises(RunExistsError, match=r"already holds a training run \(resume\.safetensors, best\.safetensors, "
                                             r"last\.safetensors, metrics\.csv, curves\.png, run\.json\); continue it "
                                             r"with --resume, or start again from scratch with --overwrite"):
        _train(tiny_config, data, out, epochs=1, seed=4)
    root, embeddings = data
    command = ["train", "--config", "tiny", "--data", str(root), "--embeddings", str(embeddings), "--epochs", "1",
               "--out", str(out), "--seed", "4", "--threads", "1"]
    refused = CliRunner().invoke(main, command)
    assert refused.exit_code == 1 and "already holds a training run" in refused.output
    assert "--resume" in refused.output and "--overwrite" in refused.output and "Traceback" not in refused.output
    assert _digests(out) == before  # nothing touched
    both = CliRunner().invoke(main, command + ["--resume", "--overwrite"])
    assert both.exit_code == 2 and "give --resume" in both.output and _digests(out) == before
    replaced = CliRunner().invoke(main, command + ["--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    after = _digests(out)
    assert after["notes.txt"] == before["notes.txt"] and after["other.safetensors"] == before["other.safetensors"]
    assert after["best.safetensors"] != before["best.safetensors"]  # seed 4's run replaced seed 3's
    assert read_train_metadata(out)["settings"]["seed"] == 4


# --- Ctrl-C ------------------------------------------------------------------------------------------

def test_sigint_exits_130_with_the_resume_command(tmp_path: Path, data, interruptible):
    root, embeddings = data
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mrdl_apps", "train",
               "--config", "tiny", "--data", str(root), "--embeddings", str(embeddings), "--epochs", "500",
               "--out", str(out), "--threads", "1"]
    process = subprocess.Popen(interruptible(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.csv").exists():  # wait for the first completed epoch
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training did not complete an epoch in 240 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    saved = read_train_metadata(out)["progress"]["epoch"]
    assert process.returncode == 130, (stdout, stderr)
    assert "best Val Dice" not in stdout + stderr and "Traceback" not in stderr
    assert f"interrupted: the run in {out} is saved after epoch {saved} of 500 (work since then is lost); " \
           f"continue it with: mrdl train --out {out} --resume" in stderr


# --- bounded description tables ----------------------------------------------------------------------

_SHARED_STRINGS = ('<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-'
                   'officedocument.spreadsheetml.sharedStrings+xml"/>')
_STRINGS_RELATION = ('<Relationship Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
                     'sharedStrings" Target="sharedStrings.xml" Id="rIdStrings"/>')


def _dataset_with_description(tmp_path: Path, description: str) -> Path:
    """A dataset whose Train_text.xlsx keeps its texts in xl/sharedStrings.xml, as Excel does, with
    ``description`` (streamed into the zip) as the first image's Description."""
    from xml.sax.saxutils import escape

    from openpyxl import load_workbook

    root = write_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=1, size=32)
    table = root / "Train_Folder" / "Train_text.xlsx"
    book = load_workbook(table, read_only=True)
    rows = [list(row) for row in book.active.iter_rows(values_only=True)]
    book.close()
    rows[1][1] = None  # stands for ``description``
    strings = [cell for row in rows for cell in row]
    cells = iter(range(len(strings)))
    sheet = ('<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
             + "".join(f'<row r="{r}">' + "".join(f'<c r="{col}{r}" t="s"><v>{next(cells)}</v></c>' for col in "AB")
                       + "</row>" for r in range(1, len(rows) + 1))
             + "</sheetData></worksheet>")
    rewritten = table.with_suffix(".new")
    with zipfile.ZipFile(table) as source, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            data = source.read(name).decode()
            data = {"[Content_Types].xml": data.replace("</Types>", _SHARED_STRINGS + "</Types>"),
                    "xl/_rels/workbook.xml.rels": data.replace("</Relationships>", _STRINGS_RELATION + "</Relationships>"),
                    "xl/worksheets/sheet1.xml": sheet}.get(name, data)
            target.writestr(name, data)
        with target.open("xl/sharedStrings.xml", "w", force_zip64=True) as member:
            member.write(b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">')
            for text in strings:
                member.write(b"<si><t>")
                if text is None:
                    for start in range(0, len(description), 1 << 20):
                        member.write(escape(description[start : start + (1 << 20)]).encode())
                else:
                    member.write(escape(text).encode())
                member.write(b"</t></si>")
            member.write(b"</sst>")
    rewritten.replace(table)
    return root


def test_xlsx_that_unzips_huge_is_refused_before_it_is_parsed(tmp_path: Path, monkeypatch):
    root = _dataset_with_description(tmp_path, "a" * (64 << 20))  # 64 MiB of text in a ~100 KB file
    table = root / "Train_Folder" / "Train_text.xlsx"
    assert table.stat().st_size < 400_000
    import openpyxl

    monkeypatch.setattr(openpyxl, "load_workbook", lambda *a, **k: pytest.fail("openpyxl opened the bomb"))
    out = tmp_path / "e.safetensors"
    result = CliRunner().invoke(main, ["embed-text", str(root), "--config", "tiny", "--out", str(out)])
    assert result.exit_code == 1 and not out.exists() and "Traceback" not in result.output
    assert re.search(rf"{re.escape(str(table))} unzips to 64\.0 MiB, over the limit of 50 MiB for a description "
                     r"table; raise it with --max-table-mib", result.output), result.output


def test_description_longer_than_the_limit_is_refused_while_reading(tmp_path: Path):
    root = _dataset_with_description(tmp_path, "nuclei " * 3000)  # 21000 characters
    out = tmp_path / "e.safetensors"
    result = CliRunner().invoke(main, ["embed-text", str(root), "--config", "tiny", "--out", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert "Train_text.xlsx row 2 holds a text of 21000 characters, over the limit of 10000 characters per " \
           "description; raise it with --max-description-chars" in result.output
    raised = CliRunner().invoke(main, ["embed-text", str(root), "--config", "tiny", "--out", str(out),
                                       "--max-description-chars", "25000"])
    assert raised.exit_code == 0 and out.is_file(), raised.output


def test_table_file_size_and_row_limits(tmp_path: Path):
    root = write_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=1, size=32)
    (root / "Val_Folder" / "Val_text.xlsx").unlink()
    table = root / "Val_Folder" / "Val_text.csv"
    table.write_text("Image,Description\n" + "".join(f"s{i}.png,small nuclei\n" for i in range(20)) + "x,"
                     + "y" * 9000 * 250)
    out = tmp_path / "e.safetensors"
    base = ["embed-text", str(root), "--config", "tiny", "--out", str(out)]
    too_big = CliRunner().invoke(main, base + ["--max-table-mib", "2"])
    assert too_big.exit_code == 1 and f"{table} is 2.1 MiB, over the limit of 2 MiB for a description table; " \
                                      "raise it with --max-table-mib" in too_big.output
    too_long = CliRunner().invoke(main, base + ["--max-rows", "10"])
    assert too_long.exit_code == 1 and f"{table} has more than 10 rows, the limit for a description table; " \
                                       "raise it with --max-rows" in too_long.output
    assert not out.exists()


# --- clear errors for damaged checkpoints and foreign CLIP weights -----------------------------------

def _rewrite(path: Path, change) -> None:
    """Edit a checkpoint's tensors and re-sign its digests (tensors, then metadata): a consistent file of the
    wrong shape."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mrdl.tagged_file import METADATA_DIGEST_KEY, metadata_digest

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    change(tensors)
    metadata = {**metadata, "mrdl.tensors_sha256": tensors_digest(tensors)}
    save_file(tensors, str(path), metadata={**metadata, METADATA_DIGEST_KEY: metadata_digest(metadata)})


def test_checkpoint_with_wrong_shape_or_missing_tensor(tmp_path: Path, tiny_model):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    name = next(k for k, v in tiny_model.state_dict().items() if v.ndim == 4)
    shape = tuple(tiny_model.state_dict()[name].shape)
    _rewrite(path, lambda t: t.update({name: torch.zeros(shape[0] + 1, *shape[1:])}))
    message = (f"does not match its own config 'tiny' (edited, or written by another mrdl version?): "
               f"tensor '{name}' has shape {(shape[0] + 1, *shape[1:])}, expected {shape}")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path)
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    _rewrite(path, lambda t: t.pop("prompt_features"))
    result = CliRunner().invoke(main, ["evaluate", "--ckpt", str(path), "--data", str(tmp_path), "--out",
                                       str(tmp_path / "eval")])
    assert result.exit_code == 1 and "missing tensors ['prompt_features']" in result.output
    assert "Traceback" not in result.output


def test_pickle_or_foreign_clip_weights_are_refused(tmp_path: Path, tiny_config, monkeypatch):
    from safetensors.torch import save_file

    from mrdl.text import random_text_tower

    root = write_synthetic_dataset(tmp_path / "syn", n_train=1, n_val=1, size=32)
    state = random_text_tower(tiny_config.model.text, seed=5).model.state_dict()
    pickled = tmp_path / "clip.pt"
    torch.save(state, pickled)
    out = tmp_path / "e.safetensors"
    base = ["embed-text", str(root), "--config", "tiny", "--out", str(out), "--clip-weights"]
    with monkeypatch.context() as patch:
        for name in ("load", "loads", "Unpickler"):
            patch.setattr(pickle, name, lambda *a, **k: pytest.fail("unpickled"))
        refused = CliRunner().invoke(main, base + [str(pickled)])
    assert refused.exit_code == 1 and not out.exists() and "weights_only" not in refused.output
    assert f"{pickled} is a pickle checkpoint (torch.save); mrdl never unpickles files" in refused.output
    convert = re.search(r'python -c "(.*)" and pass --clip-weights (\S+)', refused.output)
    subprocess.run([sys.executable, "-c", convert.group(1)], check=True, timeout=300)  # the advice works
    converted = CliRunner().invoke(main, base + [convert.group(2)])
    assert converted.exit_code == 0 and out.is_file(), converted.output

    (tmp_path / "junk.bin").write_bytes(b"\x00" * 100)
    junk = CliRunner().invoke(main, base + [str(tmp_path / "junk.bin")])
    assert junk.exit_code == 1 and "junk.bin is not a safetensors file" in junk.output
    wide = tmp_path / "wide.safetensors"
    save_file({k: torch.zeros(*v.shape[:-1], 2 * v.shape[-1]) if k == "token_embedding.weight" else v.contiguous()
               for k, v in state.items()}, str(wide))
    mismatch = CliRunner().invoke(main, base + [str(wide)])
    assert mismatch.exit_code == 1 and "wide.safetensors is not an open_clip custom checkpoint: tensor " \
                                       "'token_embedding.weight' has shape (49408, 64), expected (49408, 32)" \
                                       in mismatch.output
