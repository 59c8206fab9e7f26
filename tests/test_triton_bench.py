"""``mrdl-bench --backends triton --concurrency``: the serving comparison (mrdl_bench.serving), on loopback only.

Small and bounded: the tiny model, 4 requests per client, 1/4/16 clients. It checks what the
report says (every level answered without errors, the batch sizes formed add up to the images
served, masks identical to the in-process runtime), not how fast this shared machine is.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from mrdl_runtime.serving import hosting_problem

pytest.importorskip("onnxruntime")
_PROBLEM = hosting_problem()
if _PROBLEM is not None:
    pytest.skip(f"this Python cannot host PyTriton: {_PROBLEM}", allow_module_level=True)
pytest.importorskip("pytriton", reason="the serve extra is missing: pip install 'mrdl[serve]'")
pytest.importorskip("tritonclient.grpc", reason="the serve extra is missing: pip install 'mrdl[serve]'")


def test_concurrency_parsing_and_cli_refusal(tiny_export, tmp_path):
    from mrdl_apps.bench import main
    from mrdl_bench.serving import parse_concurrency

    assert parse_concurrency("1, 4,16,4") == [1, 4, 16]
    for bad in ("", "0", "a", "1,-2", "1000"):
        with pytest.raises(ValueError, match="--concurrency"):
            parse_concurrency(bad)
    ckpt, model_dir = tiny_export
    result = CliRunner().invoke(main, ["--ckpt", str(ckpt), "--model-dir", str(model_dir), "--backends", "triton",
                                       "--concurrency", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--concurrency" in result.output


def test_serving_report(model_dir):
    from mrdl_bench.serving import format_serving, measure_serving, serving_failures

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (72, 64, 3), dtype=np.uint8) for _ in range(6)]
    serving = measure_serving(model_dir, images, concurrency=[1, 4, 16], threads=1, iters=4, warmup=1,
                              batches=[1, 4])
    json.dumps(serving)  # JSON-ready, as bench.json stores it
    assert [level["clients"] for level in serving["levels"]] == [1, 4, 16]
    for level in serving["levels"]:
        assert level["errors"] == 0 and level["unfinished_clients"] == 0
        assert level["answered"] == level["requests"] == 4 * level["clients"]
        served = sum(size * count for size, count in level["batch_sizes"].items())
        assert served == level["answered"] + level["clients"]  # + one untimed warm-up request per client
        assert all(1 <= size <= serving["max_batch"] for size in level["batch_sizes"])
        assert level["throughput_ips"] > 0 and level["latency_ms"]["p99"] >= level["latency_ms"]["p50"] > 0
        assert level["in_process_beside_ips"] > 0 and level["fraction_of_in_process_beside"] > 0
    assert serving["agreement"] == {"images": 6, "identical_masks": 6, "mean_dice": 1.0}
    assert [row["batch"] for row in serving["in_process"]] == [1, 4]
    assert serving["server_exit_code"] == 0 and serving_failures(serving) == []
    # no --max-queue-delay-us: the server timed the (tiny, fast) model and waits within the auto bounds
    assert serving["queue_delay_auto"] and 500 <= serving["max_queue_delay_us"] <= 50_000
    text = "\n".join(format_serving(serving))
    assert "16 clients" in text and "p99" in text and "masks identical to in-process: 6/6" in text
    assert f"queue delay {serving['max_queue_delay_us']} us (auto)" in text


class _TimedSegmenter:
    """Stands in for a Segmenter whose model takes ``seconds`` per call."""

    def __init__(self, seconds: float) -> None:
        from types import SimpleNamespace

        self.seconds, self.calls = seconds, []
        self.manifest = SimpleNamespace(image_input=SimpleNamespace(fixed_shape=(3, 32, 48)))

    def infer(self, batch):
        self.calls.append(batch.shape)
        time.sleep(self.seconds)


@pytest.mark.parametrize(("seconds", "low", "high"), [(0.1, 9_000, 13_000), (0.0001, 500, 500), (0.8, 50_000, 50_000)])
def test_auto_queue_delay_is_a_tenth_of_one_inference_within_bounds(seconds, low, high):
    from mrdl_runtime.serving import auto_queue_delay_us

    segmenter = _TimedSegmenter(seconds)
    delay = auto_queue_delay_us(segmenter)
    assert low <= delay <= high, delay
    assert segmenter.calls == [(1, 3, 32, 48)] * 4  # one image at the model's size: a warm-up and three timed
