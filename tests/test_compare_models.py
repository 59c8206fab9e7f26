"""python -m mrdl_bench.compare_models: interleaved A/B of model files (speed only; never timed here)."""

from __future__ import annotations

import pytest


def test_specs_are_checked_before_any_model_opens():
    from mrdl_bench.compare_models import compare, parse_spec

    assert parse_spec("new=ov-int8:/m/model.int8.onnx") == ("new", "ov-int8", "/m/model.int8.onnx")
    assert parse_spec("a=ort:C:/m.onnx") == ("a", "ort", "C:/m.onnx")  # only the first ':' splits
    for bad in ("ort:/m.onnx", "a=trt:/m.onnx", "a=ort", "=ort:/m.onnx", "a=ort:"):
        with pytest.raises(ValueError, match="LABEL=RUNNER:PATH"):
            parse_spec(bad)
    with pytest.raises(ValueError, match="at least two"):
        compare(["a=ort:/m.onnx"])
    with pytest.raises(ValueError, match="labels must differ"):
        compare(["a=ort:/m.onnx", "a=ort:/n.onnx"])


def test_two_files_are_timed_in_the_same_rounds(tiny_export, capsys):
    pytest.importorskip("onnxruntime")
    from mrdl_bench.compare_models import main

    _, model_dir = tiny_export
    path = model_dir / "model.onnx"
    assert main([f"first=ort:{path}", f"second=ort:{path}", "--rounds", "3", "--warmup", "1", "--settle-ms", "0",
                 "--threads", "1", "--batch", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["first", "second"]
    assert "over first: 1.000x [1.000, 1.000] (3 rounds, batch 2)" in lines[0]
    assert "(3 rounds, batch 2)" in lines[1]


def test_a_missing_file_is_one_error_line(tmp_path, capsys):
    from mrdl_bench.compare_models import main

    missing = tmp_path / "absent.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main([f"a=ort:{missing}", f"b=ort:{missing}"])
    assert exit_info.value.code == 2
    assert f"{missing}: no such model file" in capsys.readouterr().err
