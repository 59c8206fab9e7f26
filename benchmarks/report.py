"""The benchmark report: typed results, machine info, and its terminal, JSON, Markdown and PNG forms.

A backend marked ``PARITY FAILED`` shows its speed-up in parentheses (table, Markdown), under
``speedup_unverified`` instead of ``speedup_vs_torch_eager`` (JSON) and without a bar (chart):
it is the speed of a model that does not reproduce the checkpoint, not a result.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .measure import LatencySummary, Parity

LIBRARIES = ("mrdl", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy", "psutil")
REPORT_FILES = {"json": "bench.json", "markdown": "bench.md", "chart": "bench.png"}
PARITY_OK = "ok"
PARITY_FAILED = "PARITY FAILED"
DEFAULT_MIN_DICE = 0.99  # FP32 / FP16 backends: mask Dice agreement with the reference
DEFAULT_INT8_MIN_DICE = 0.95  # INT8 backends: quantisation moves pixels near the threshold


@dataclass
class BackendResult:
    """One backend at one batch size."""

    backend: str
    precision: str  # the precision the backend's model holds (fp32, fp16, int8)
    batch: int
    latency_ms: LatencySummary
    warmup: dict[str, float]  # iterations, total_ms, first_ms
    throughput_ips: float  # images per second = batch / mean latency
    peak_memory_mb: float
    memory_method: str
    model_size_mb: float
    model_file: str
    parity: Parity | None  # against PyTorch FP32 (torch-fft)
    parity_vs_onnx_fp32: Parity | None  # quantised / reduced-precision artifacts only
    prepost_included: bool
    gflops_achieved: float | None = None
    peak_fraction: float | None = None  # gflops_achieved / measured matmul peak
    int8_peak_fraction: float | None = None  # INT8 backends: gflops_achieved / the measured integer GEMM peak
    speedup_vs_torch_eager: float | None = None  # torch-fft p50 / this p50, same batch; parity passed only
    parity_min_dice: float | None = None  # the threshold applied to parity.dice_agreement
    parity_status: str | None = None  # PARITY_OK or PARITY_FAILED
    speedup_unverified: float | None = None  # the speed-up of a backend that failed parity: not a result
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["latency_ms"] = self.latency_ms.to_dict()
        return data


@dataclass
class SkippedBackend:
    backend: str
    reason: str


@dataclass
class BenchReport:
    """Everything one ``run_benchmark`` call measured, and how."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    flops_per_image: int
    matmul_peak: dict[str, Any]
    results: list[BackendResult]
    skipped: list[SkippedBackend]
    phase_share: list[dict[str, Any]]
    profiles: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # PARITY FAILED / SOURCE MISMATCH sentences
    files: dict[str, str] = field(default_factory=dict)
    int8_peak: dict[str, Any] | None = None  # onnxruntime's u8 x s8 GEMM rate (with an INT8 backend); see measure.py
    serving: dict[str, Any] | None = None  # mrdl_bench.serving.measure_serving (backend "triton")

    def to_dict(self) -> dict:
        return {"settings": self.settings, "machine": self.machine, "flops_per_image": self.flops_per_image,
                "matmul_peak": self.matmul_peak, "int8_peak": self.int8_peak, "failures": self.failures,
                "results": [r.to_dict() for r in self.results], "skipped": [asdict(s) for s in self.skipped],
                "phase_share": self.phase_share, "profiles": self.profiles, "files": self.files,
                "serving": self.serving}

    def result(self, backend: str, batch: int) -> BackendResult | None:
        return next((r for r in self.results if r.backend == backend and r.batch == batch), None)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_versions() -> dict[str, str | None]:
    """Installed versions from package metadata (nothing is imported; absent ones are None)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict[str, Any]:
    import psutil

    return {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "libraries": library_versions(),
            "load_average_start": list(os.getloadavg())}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


TABLE_COLUMNS = ("backend", "batch", "p50 ms", "p90 ms", "p99 ms", "mean±sd ms", "img/s", "speed-up", "GFLOP/s",
                 "% peak", "% int8 peak", "mem MB", "size MB", "max|Δp|", "Dice agr.", "parity")


def _speedup(r: BackendResult) -> str:
    if r.speedup_unverified is not None:
        return f"({r.speedup_unverified:.2f}x)"
    return _fmt(r.speedup_vs_torch_eager, ".2f") + ("x" if r.speedup_vs_torch_eager else "")


def _parity_cell(r: BackendResult) -> str:
    if r.parity_status is None:
        return "-"
    return r.parity_status if r.parity_status == PARITY_FAILED else f"ok (>= {r.parity_min_dice:g})"


def table_rows(report: BenchReport) -> list[list[str]]:
    rows = []
    for r in report.results:
        lat = r.latency_ms
        rows.append([r.backend, str(r.batch), f"{lat.p50:.1f}", _fmt(lat.p90 if lat.meaningful(90) else None, ".1f"),
                     _fmt(lat.p99 if lat.meaningful(99) else None, ".1f"),
                     f"{lat.mean:.1f}±{lat.stdev:.1f}", f"{r.throughput_ips:.2f}", _speedup(r),
                     _fmt(r.gflops_achieved, ".1f"),
                     _fmt(None if r.peak_fraction is None else 100 * r.peak_fraction, ".1f"),
                     _fmt(None if r.int8_peak_fraction is None else 100 * r.int8_peak_fraction, ".1f"),
                     f"{r.peak_memory_mb:.0f}", f"{r.model_size_mb:.1f}",
                     _fmt(r.parity.max_abs_diff if r.parity else None, ".2e"),
                     _fmt(r.parity.dice_agreement if r.parity else None, ".4f"), _parity_cell(r)])
    return rows


def format_table(report: BenchReport) -> str:
    """The results as an aligned plain-text table, followed by skips and the phase share."""
    rows = [list(TABLE_COLUMNS), *table_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.extend(_footer(report))
    return "\n".join(lines)


def _footer(report: BenchReport) -> list[str]:
    s = report.settings
    lines = list(report.failures)
    if any(r.parity_status == PARITY_FAILED for r in report.results):
        lines.append(f"speed-ups in parentheses belong to backends marked {PARITY_FAILED}: not results")
    streams = f" in {s['streams']} streams (CPU runtime backends)" if s.get("streams", 1) > 1 else ""
    lines += [f"threads {s['threads']}{streams}; pre/post-processing {'included' if s['include_prepost'] else 'excluded'}; "
             f"inputs {s['inputs']} ({s['images']} images); warm-up {s['warmup']}, timed {s['iters']} iterations; "
             f"speed-up vs torch-fft (PyTorch eager, FP32) p50; parity vs torch-fft",
             f"FLOPs/image {report.flops_per_image / 1e9:.2f} G; "
             f"matmul peak {report.matmul_peak['gflops']:.1f} GFLOP/s "
             f"({report.matmul_peak['method']}; % peak of INT8 backends can pass 100%: their kernels are not FP32); "
             f"memory: {report.results[0].memory_method if report.results else '-'}"]
    if report.int8_peak:
        p = report.int8_peak
        lines.append(f"INT8 peak {p['gops']:.1f} GOP/s ({p['method']}); FP32 measured the same way "
                     f"{p['fp32_gops_same_way']:.1f} GFLOP/s: INT8 GEMM / FP32 GEMM = {p['int8_over_fp32']:.2f}x, the "
                     f"hardware's ceiling for INT8 over FP32 speed-up; % int8 peak = the model's FLOPs at each INT8 "
                     f"backend's throughput / INT8 peak")
    lines += _paired_lines(report)
    for skip in report.skipped:
        lines.append(f"skipped {skip.backend}: {skip.reason}")
    for share in report.phase_share:
        lines.append(f"export-safe phase (MatmulPhaseSpectrum) at batch {share['batch']}: "
                     f"{share['phase_ms']:.2f} ms of "
                     f"{share['model_ms']:.1f} ms = {100 * share['share']:.2f}% of the torch-matmul model's latency "
                     f"({100 * share['phase_flops_share']:.2f}% of its FLOPs)")
    for profile in report.profiles:
        ops = ", ".join(f"{op['op']} {100 * op['share']:.0f}%" for op in profile["top_ops"][:4])
        lines.append(f"profile {profile['backend']} (batch {profile['batch']}): {ops}")
    if report.serving:
        from .serving import format_serving

        lines += format_serving(report.serving)
    return lines


def _paired_lines(report: BenchReport) -> list[str]:
    """Per-round speed-ups of the interleaved rounds, the load check, and which percentiles were resolved."""
    lines = []
    for batch, check in report.settings.get("load_check", {}).items():
        lines.append(f"batch {batch}: load average {check['start']:.2f} before, {check['end']:.2f} after the timed "
                     f"rounds; {check['note']}")
    paired = [r for r in report.results if "paired_speedup" in r.notes]
    if paired:
        base = paired[0].notes["paired_speedup"]["baseline"]
        cells = [f"{r.backend} b{r.batch} {p['median']:.2f}x [{p['p25']:.2f}, {p['p75']:.2f}]"
                 for r in paired for p in [r.notes["paired_speedup"]]]
        lines.append(f"paired speed-up over {base}, per interleaved round (median [quartiles], "
                     f"{paired[0].notes['paired_speedup']['rounds']} rounds): " + "; ".join(cells))
    if report.results and not report.results[0].latency_ms.meaningful(90):
        lines.append("p90 needs >= 10 timed iterations and p99 >= 100: '-' where --iters gives fewer")
    elif report.results and not report.results[0].latency_ms.meaningful(99):
        lines.append("p99 needs >= 100 timed iterations: '-' where --iters gives fewer")
    return lines


def format_markdown(report: BenchReport) -> str:
    m = report.machine
    lines = ["# mrdl-bench report", "",
             f"Model `{report.settings['model']}` from `{report.settings['ckpt']}`; "
             f"model dir `{report.settings['model_dir']}`.", "",
             f"Machine: {m['cpu_model']}, {m['logical_cores']} logical / {m['physical_cores']} physical cores, "
             f"{m['memory_gb']} GB; load average at start {', '.join(f'{x:.2f}' for x in m['load_average_start'])}, "
             f"at end {', '.join(f'{x:.2f}' for x in m.get('load_average_end', []))}.", "",
             "Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v), "",
             *[f"**{failure}**\n" for failure in report.failures],
             "| " + " | ".join(c.replace("|", "\\|") for c in TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += [""] + [f"- {line}" for line in _footer(report)]
    return "\n".join(lines) + "\n"


def plot_chart(report: BenchReport, path: Path) -> None:
    """Bar charts: p50 latency per backend and batch (p90 as error bar), and speed-up vs torch-fft."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r.backend for r in report.results))
    batches = sorted({r.batch for r in report.results})
    figure, (latency_axis, speedup_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(batches), 1)
    for offset, batch in enumerate(batches):
        xs, p50s, spreads, speedups = [], [], [], []
        for i, backend in enumerate(backends):
            result = report.result(backend, batch)
            if result is None:
                continue
            xs.append(i + (offset - (len(batches) - 1) / 2) * width)
            p50s.append(result.latency_ms.p50)
            spreads.append(result.latency_ms.p90 - result.latency_ms.p50 if result.latency_ms.meaningful(90) else 0.0)
            speedups.append(result.speedup_vs_torch_eager or 0.0)  # no bar for a backend that failed parity
            if result.parity_status == PARITY_FAILED:
                speedup_axis.text(xs[-1], 0.05, PARITY_FAILED, rotation=90, ha="center", va="bottom", color="red",
                                  fontsize=8)
        latency_axis.bar(xs, p50s, width, yerr=[[0] * len(spreads), spreads], capsize=3, label=f"batch {batch}")
        speedup_axis.bar(xs, speedups, width, label=f"batch {batch}")
    for axis, title in ((latency_axis, "p50 latency per batch, ms (bar to p90)"),
                        (speedup_axis, "speed-up vs torch-fft eager (p50)")):
        axis.set_xticks(range(len(backends)), backends, rotation=30, ha="right")
        axis.set_title(title)
        axis.legend()
    speedup_axis.axhline(1.0, color="grey", linewidth=0.8)
    s = report.settings
    figure.suptitle(f"mrdl-bench: {s['model']}, {s['threads']} threads, {s['inputs']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def write_report(report: BenchReport, out_dir: Path) -> dict[str, str]:
    """Write bench.json, bench.md and bench.png into ``out_dir``, each atomically; return their paths."""
    from mrdl_runtime.atomic import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: str(out_dir / name) for kind, name in REPORT_FILES.items()}
    report.files = paths
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(format_markdown(report))
    with atomic_path(paths["chart"]) as tmp:
        plot_chart(report, tmp)
    return paths
