"""ExportOptions is the one place of the export's options: mrdl-export's click options are built from
its fields, validate() refuses bad values by name, export_model's keywords are its fields; the
manifest writer goes through the runtime's reader; the drift check's phase switch keeps the model's
config and its phase module in step."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")


def test_cli_options_are_the_fields_of_export_options():
    from mrdl_apps.export import main
    from mrdl_export.options import ExportOptions
    from mrdl_runtime.options import command_line_flag

    params = {param.name: param for param in main.params}
    cli_fields = [f for f in dataclasses.fields(ExportOptions) if command_line_flag(f) is not None]
    assert set(params) == {f.name for f in cli_fields} | {"ckpt", "out", "print_summary", "version"}
    assert [p.name for p in main.params][2:-2] == [f.name for f in cli_fields]  # the dataclass's order
    for f in cli_fields:
        param = params[f.name]
        assert param.opts == [command_line_flag(f)]
        assert param.help == f.metadata["help"]
        assert (tuple(param.default) if param.multiple else param.default) == f.default
    assert {f.name for f in dataclasses.fields(ExportOptions)} - set(params) == {"exporter", "progress"}


@pytest.mark.parametrize("changes, message", [
    ({"parity_images": 0}, "parity_images must be a number >= 1, got 0$"),
    ({"min_dice": 1.5}, r"min_dice must be a number in \[0, 1\], got 1.5$"),
    ({"opset": 21}, r"opset must be a number in \[18, 20\], got 21$"),
    ({"opset": 17}, r"opset must be a number in \[18, 20\], got 17$"),  # below 18 onnx's converter fails
    ({"calib_method": "kl"}, "calib_method must be one of minmax, entropy, percentile, got 'kl'$"),
    ({"int8_keep_fp32": ("decoder", "head")}, "int8_keep_fp32 must be one of .*decoder, got 'head'$"),
    ({"trt_precision": "bf16"}, "trt_precision must be one of fp32, fp16, int8, got 'bf16'$"),
    ({"max_batch": 0}, r"max_batch must be a number in \[1, 4096\], got 0$"),
    ({"max_batch": 4097}, r"max_batch must be a number in \[1, 4096\], got 4097$"),  # the runtime's MAX_BATCH
    ({"min_batch": 8, "max_batch": 4}, "min <= opt <= max"),
])
def test_validate_refuses_a_bad_option_by_name(changes, message):
    from mrdl_export import ExportError, ExportOptions

    with pytest.raises(ExportError, match=message):
        ExportOptions(**changes).validate()
    assert ExportOptions().validate() == ExportOptions()


@pytest.mark.parametrize("changes, flag", [
    ({"int8_target": "tensorrt"}, "--int8-target"),
    ({"int8_keep_fp32": ("decoder",)}, "--int8-keep-fp32"),
    ({"int8_keep_fp32": ()}, "--int8-keep-fp32"),
    ({"calib_images": 4}, "--calib-images"),
    ({"calib_method": "entropy"}, "--calib-method"),
    ({"int8_max_dice_drop": 2.0}, "--int8-max-dice-drop"),
    ({"int8_min_dice": 0.9}, "--int8-min-dice"),
])
def test_int8_only_options_need_int8(tmp_path, changes, flag):
    from mrdl_export import ExportError, ExportOptions, export_model

    (tmp_path / "calib").mkdir()
    with pytest.raises(ExportError, match=f"^{flag} needs --int8"):
        ExportOptions(**changes).validate()
    with pytest.raises(ExportError, match=f"^{flag} needs --int8"):  # before the checkpoint is read
        export_model(tmp_path / "missing.safetensors", tmp_path / "out", **changes)
    assert ExportOptions(int8=True, **changes).validate()
    with pytest.raises(ExportError, match="^--calib-data needs --int8"):
        ExportOptions(calib_data=tmp_path / "calib").validate()
    assert not (tmp_path / "out").exists()


def test_export_onnx_refuses_an_opset_the_exporter_cannot_reach(tmp_path):
    from mrdl_export.onnx_export import MIN_OPSET, export_onnx

    assert MIN_OPSET == 18
    with pytest.raises(ValueError, match=r"opset must be in \[18, 20\], got 17"):
        export_onnx(torch.nn.Identity(), (torch.zeros(1, 3, 64, 64),), tmp_path / "m.onnx", opset=17)
    assert not (tmp_path / "m.onnx").exists()


def test_version_converter_warnings_stay_off_the_output_during_an_export(caplog):
    """onnxscript logs a failed opset conversion as a warning with a traceback; the export reports it in one line."""
    import logging

    from mrdl_export.onnx_export import _quiet_version_converter

    logger = logging.getLogger("onnxscript.version_converter._c_api_utils")
    with caplog.at_level(logging.WARNING), _quiet_version_converter():
        logger.warning("Failed to convert the model", exc_info=RuntimeError("axes_input_to_attribute"))
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        logger.warning("after the export")
    assert [record.message for record in caplog.records] == ["after the export"]


def test_export_model_keywords_are_export_options_fields(tmp_path):
    from mrdl_export import ExportError, ExportOptions, export_model

    with pytest.raises(TypeError, match="bogus"):
        export_model(tmp_path / "missing.safetensors", tmp_path / "out", bogus=1)
    with pytest.raises(ExportError, match="calib_method"):  # keywords apply on top of the options object
        export_model(tmp_path / "missing.safetensors", tmp_path / "out", ExportOptions(int8=True), calib_method="kl")
    assert not (tmp_path / "out").exists()


def test_phase_mode_switches_the_config_and_the_module_together(tiny_config, tiny_prompt_features):
    from mrdl.model import create_model

    model = create_model(tiny_config, prompt_features=tiny_prompt_features, seed=0)
    assert model.config.model.phase == "fft"
    with model.phase_mode("matmul"):
        assert model.config.model.phase == "matmul" and model.frequency_prompt.phase.mode == "matmul"
    assert model.config.model.phase == "fft" and model.frequency_prompt.phase.mode == "fft"
    with pytest.raises(Exception, match="phase"):
        model.set_phase("dft")
    assert model.config.model.phase == "fft" and model.frequency_prompt.phase.mode == "fft"


def _engine_only_manifest(folder, tiny_config):
    from mrdl_export.manifest import build_manifest

    (folder / "model.engine").write_bytes(b"serialized engine")
    return build_manifest(tiny_config, checkpoint_path="tiny.safetensors", checkpoint_sha256="0" * 64,
                          artifacts={"tensorrt": {"file": "model.engine", "precision": "fp32"}}, opset=20,
                          max_batch=4, parity={})


def test_model_json_is_written_only_when_the_runtime_reads_it(tmp_path, tiny_config):
    from mrdl_export import ExportError
    from mrdl_export.manifest import write_deploy_manifest
    from mrdl_runtime.manifest import load_manifest

    manifest = _engine_only_manifest(tmp_path, tiny_config)
    manifest["postprocessing"]["threshold"] = 1.5
    with pytest.raises(ExportError, match="mrdl_runtime refuses .*threshold is 1.5"):
        write_deploy_manifest(tmp_path, manifest)
    assert not (tmp_path / "model.json").exists()

    manifest["postprocessing"]["threshold"] = 0.5
    written = write_deploy_manifest(tmp_path, manifest)
    assert json.loads((tmp_path / "model.json").read_text()) == written
    assert load_manifest(tmp_path).artifact("tensorrt").file == "model.engine"
