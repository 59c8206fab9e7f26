"""LoadOptions / PredictOptions and the backend registry: a setting is one field, a backend one entry.

The options check their fields once (choices, ranges, the tiling contract) with messages naming the
field; the request fields travel to a server as text and come back equal. A backend registered as
one :class:`mrdl_runtime.backends.Backend` entry (pointing at functions of this module) is chosen by
name and runs ``Segmenter.load`` / ``predict`` without any other change.
"""

from __future__ import annotations

import numpy as np
import pytest

from mrdl_runtime import LoadOptions, OptionsError, PredictOptions
from mrdl_runtime.backends import REGISTRY, Backend, backend_choices
from mrdl_runtime.runner import Runner


def test_predict_options_check_each_field_once():
    for changes, message in [({"tile": "yes"}, "tile must be 'auto', True or False"),
                             ({"overlap": 1.0}, "0 <= overlap <= 0.9"), ({"blend": "max"}, "blend must be one of"),
                             ({"max_pixels": 0}, "max_pixels must be a number >= 1"),
                             ({"channel_order": "GBR"}, "channel_order must be one of RGB, BGR")]:
        with pytest.raises(OptionsError, match=message):
            PredictOptions(**changes)
    with pytest.raises(OptionsError, match="PredictOptions has no field tile_progress"):
        PredictOptions().with_fields(tile_progress=True)
    assert PredictOptions.of(None, tile=True) == PredictOptions(tile=True)
    assert PredictOptions.of(PredictOptions(overlap=0.5), blend="constant") == PredictOptions(overlap=0.5,
                                                                                             blend="constant")


def test_request_parameters_round_trip_as_command_line_text():
    for options in (PredictOptions(), PredictOptions(tile=True, overlap=0.1 + 0.2, blend="constant"),
                    PredictOptions(tile=False)):
        sent = options.request_parameters()
        assert set(sent) == {"tile", "overlap", "blend"} and all(isinstance(v, str) for v in sent.values())
        assert PredictOptions(max_pixels=7).from_request(sent) == options.with_fields(max_pixels=7)  # the server's
    assert PredictOptions().request_parameters()["tile"] == "auto"
    assert PredictOptions(tile=True).request_parameters()["tile"] == "true"
    assert PredictOptions().from_request({"priority": 3}) == PredictOptions()  # Triton's own parameters: ignored
    for bad, message in [({"tile": "maybe"}, "tile must be one of auto, true, false"),
                         ({"overlap": "nan"}, "overlap"), ({"overlap": "x"}, "overlap must be a number"),
                         ({"blend": "bogus"}, "blend must be one of")]:
        with pytest.raises(OptionsError, match=f"request parameter {message}"):
            PredictOptions().from_request(bad)


def test_load_options_name_the_registry():
    assert backend_choices() == ("auto", *REGISTRY)
    with pytest.raises(OptionsError, match="backend must be 'auto' or one of .*onnxruntime-cpu.*got 'openvino-x'"):
        LoadOptions(backend="openvino-x")
    with pytest.raises(OptionsError, match="precision must be one of"):
        LoadOptions(precision="fp8")
    for threads in (-1, 1025, 10**9):  # a fixed bound, far above any CPU's cores: refused before the runtime
        with pytest.raises(OptionsError, match=rf"threads must be a number in \[0, 1024\], got {threads}$"):
            LoadOptions(threads=threads)
    assert LoadOptions(threads=1024).threads == 1024


@pytest.mark.parametrize(("changes", "message"), [
    ({"at_model_size": "false"}, "at_model_size must be True or False, got 'false'$"),
    ({"with_probabilities": "no"}, "with_probabilities must be True or False, got 'no'$"),
    ({"progress": 1}, "progress must be True or False, got 1$"),
    ({"progress": np.bool_(True)}, "progress must be True or False"),
    ({"max_pixels": 1.5}, r"max_pixels must be an integer >= 1, got 1.5$"),
    ({"max_pixels": 2.0}, r"max_pixels must be an integer >= 1, got 2.0$"),
    ({"max_pixels": True}, "max_pixels must be a number >= 1, got True$"),
    ({"max_pixels": "100"}, "max_pixels must be a number >= 1, got '100'$"),
])
def test_bool_and_int_fields_take_only_their_type(changes, message):
    """A bool field takes True or False (not "false", which is truthy), an int field an int (not 1.5, not True)."""
    with pytest.raises(OptionsError, match=message):
        PredictOptions(**changes)


def test_type_checks_follow_the_field_hints_of_every_options_class():
    from dataclasses import dataclass

    from mrdl.train_options import TrainOptions
    from mrdl_runtime.options import check_fields, option
    from mrdl_runtime.serving import ServeOptions

    @dataclass(frozen=True)
    class Probe:
        count: int | None = option(None, "Optional int.")
        flag: bool = option(False, "A flag.")
        rate: float = option(0.5, "A float takes an int too.")
        tile: str | bool = option("auto", "Text or flag.", choices=("auto", True, False))

    check_fields(Probe())
    check_fields(Probe(count=3, flag=True, rate=1, tile=False))
    for changes, message in [({"count": 3.0}, "count must be an integer, got 3.0$"),
                             ({"count": False}, "count must be an integer, got False$"),
                             ({"flag": "true"}, "flag must be True or False, got 'true'$"),
                             ({"flag": 0}, "flag must be True or False, got 0$")]:
        with pytest.raises(OptionsError, match=message):
            check_fields(Probe(**changes))
    assert PredictOptions(tile=True, at_model_size=True, max_pixels=10).tile is True
    with pytest.raises(OptionsError, match="instances must be an integer in \\[1, 64\\], got 2.5$"):
        ServeOptions(instances=2.5)
    with pytest.raises(OptionsError, match="resume must be True or False"):
        TrainOptions(resume="yes").validate()
    with pytest.raises(OptionsError, match="epochs must be an integer"):
        TrainOptions(epochs=2.5).validate()
    assert TrainOptions(epochs=3).validate().epochs == 3


def test_one_field_helper_and_one_check_for_every_options_class():
    """``option`` / ``check_fields`` / ``command_line_flag`` are the one helper of the runtime's, the export's and
    the training's options: open and closed ends, a range with only a top, repeatable choices, each layer's error."""
    from dataclasses import dataclass, fields

    from mrdl.train_options import Hardware, TrainOptions
    from mrdl_export.options import ExportOptions
    from mrdl_runtime.options import check_fields, command_line_flag, option

    @dataclass(frozen=True)
    class Probe:
        rate: float = option(0.5, "Open at both ends.", low=0, high=1, low_open=True, high_open=True)
        cap: int = option(3, "Only a top.", high=10)
        parts: tuple = option(("a",), "Repeatable.", choices=("a", "b"))
        quiet: bool = option(False, "Library-only.", cli=False, flag="--hush")
        spelled: int = option(1, "Own spelling.", flag="--spell")

    check_fields(Probe())
    for changes, message in [({"rate": 0.0}, r"rate must be a number in \(0, 1\), got 0.0$"),
                             ({"rate": 1.0}, r"rate must be a number in \(0, 1\), got 1.0$"),
                             ({"rate": float("nan")}, r"rate must be a number in \(0, 1\), got nan$"),
                             ({"cap": 11}, "cap must be a number <= 10, got 11$"),
                             ({"cap": True}, "cap must be a number <= 10, got True$"),
                             ({"parts": ("a", "c", "d")}, "parts must be one of a, b, got 'c', 'd'$")]:
        with pytest.raises(OptionsError, match=message):
            check_fields(Probe(**changes))
        with pytest.raises(KeyError, match=message.split(" ")[0]):
            check_fields(Probe(**changes), error=KeyError)
    check_fields(Probe(rate=2.0), skip=("rate",))
    assert [command_line_flag(f) for f in fields(Probe)] == ["--rate", "--cap", "--parts", None, "--spell"]
    for options_class in (LoadOptions, PredictOptions, ExportOptions, TrainOptions, Hardware):
        for option_field in fields(options_class):  # every field written with the one helper
            assert set(option_field.metadata) >= {"help", "flag", "cli", "choices", "low", "high"}, option_field.name
    assert TrainOptions.__dataclass_fields__["ema_decay"].metadata["config"] == "train"
    assert PredictOptions.__dataclass_fields__["tile"].metadata["request"] is True


class ConstantRunner(Runner):
    """A stand-in backend: every pixel gets probability 0.75 of the first class."""

    backend = "constant-test"

    def __init__(self, manifest) -> None:
        super().__init__()
        self.manifest = manifest

    def _open(self) -> None:
        self.input_specs, self.output_specs = list(self.manifest.inputs), list(self.manifest.outputs)

    def _infer(self, feeds):
        batch = next(iter(feeds.values()))
        out = self.manifest.outputs[0]
        return {out.name: np.full((len(batch), *out.fixed_shape), 0.75, np.float32)}

    def _close(self) -> None:
        pass


def open_constant(manifest, backend, precision, options):
    assert isinstance(options, LoadOptions) and options.backend == backend  # the options arrive whole
    return ConstantRunner(manifest)


def constant_unavailable(manifest, backend, precision):
    return None


def test_a_backend_is_one_registry_entry(model_dir, monkeypatch):
    from mrdl_runtime import Segmenter, select_backend
    from mrdl_runtime.manifest import load_manifest

    entry = Backend("constant-test", "a stand-in", "cpu", ("fp32",), open="test_options:open_constant",
                    unavailable="test_options:constant_unavailable")
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    assert select_backend(load_manifest(model_dir), "constant-test") == ("constant-test",
                                                                        "constant-test was asked for by name")
    assert "runs fp32, not int8" in str(pytest.raises(Exception, select_backend, load_manifest(model_dir),
                                                      "constant-test", "int8").value)
    with Segmenter.load(model_dir, backend="constant-test") as segmenter:
        assert segmenter.backend == "constant-test" and isinstance(segmenter.runner, ConstantRunner)
        prediction = segmenter.predict(np.zeros((30, 40, 3), np.uint8))
    assert prediction.mask.shape == (30, 40) and prediction.mask.all()  # 0.75 > the calibrated threshold
