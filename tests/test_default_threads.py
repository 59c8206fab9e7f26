"""Default thread count = physical cores available to the process (affinity, SMT siblings once, cgroup
quota), and ONNX Runtime sessions opened with 0 threads get it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrdl_runtime import threads


def _fake_sysfs(root: Path, siblings: dict[int, str], *, name: str = "core_cpus_list") -> Path:
    for cpu, text in siblings.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / name).write_text(text + "\n")
    return root


def test_smt_siblings_count_once(tmp_path):
    # 4 cores with 2 threads each: cpu N and N+4 share a core
    sysfs = _fake_sysfs(tmp_path, {cpu: f"{cpu % 4},{cpu % 4 + 4}" for cpu in range(8)})
    assert threads.physical_cores(set(range(8)), sysfs=sysfs) == 4
    assert threads.physical_cores({0, 4}, sysfs=sysfs) == 1  # two logical CPUs of one core
    assert threads.physical_cores({0, 1, 5}, sysfs=sysfs) == 2


def test_older_kernels_and_missing_topology(tmp_path):
    sysfs = _fake_sysfs(tmp_path, {0: "0-1", 1: "0-1", 2: "2-3", 3: "2-3"}, name="thread_siblings_list")
    assert threads.physical_cores({0, 1, 2, 3}, sysfs=sysfs) == 2
    assert threads.physical_cores({7, 8}, sysfs=sysfs) == 2  # no topology: each CPU is its own core


def test_cgroup_quota(tmp_path):
    assert threads.cgroup_cpu_limit(root=tmp_path) is None  # no cgroup files
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(root=tmp_path) is None
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert threads.cgroup_cpu_limit(root=tmp_path) == 3  # 2.5 CPUs, rounded up
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(root=tmp_path) == 1


def test_default_is_the_smallest_limit(monkeypatch):
    monkeypatch.setattr(threads, "allowed_cpus", lambda: set(range(16)))
    monkeypatch.setattr(threads, "physical_cores", lambda cpus: len(cpus) // 2)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.default_threads() == 8
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 3)
    assert threads.default_threads() == 3
    assert threads.resolve_threads(0) == 3
    assert threads.resolve_threads(5) == 5
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        threads.resolve_threads(-1)


def test_this_machine_default_within_affinity():
    count = threads.default_threads()
    assert 1 <= count <= len(threads.allowed_cpus())


def test_onnxruntime_session_gets_the_default(model_dir):
    from mrdl_runtime.backends import make_runner
    from mrdl_runtime.options import LoadOptions
    from mrdl_runtime.manifest import load_manifest

    manifest = load_manifest(model_dir)
    with make_runner(manifest, "onnxruntime-cpu", "fp32", LoadOptions(threads=0)) as runner:
        got = runner.session.get_session_options().intra_op_num_threads
    assert got == threads.default_threads()
    with make_runner(manifest, "onnxruntime-cpu", "fp32", LoadOptions(threads=1)) as runner:
        assert runner.session.get_session_options().intra_op_num_threads == 1
