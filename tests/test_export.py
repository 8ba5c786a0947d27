"""Exports: every format is written, run on real pixels at two batch sizes and compared with eager PyTorch."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from inceptionv3 import get_model
from inceptionv3.cli import main
from inceptionv3.export import FP32_TOLERANCE, ExportError, load_runner, require, sample_batch, verify_export


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torchscript", "torch-export"])
def test_dynamic_batch_exports_match_eager_on_real_pixels(fmt, trained_like_checkpoint, tmp_path, capsys):
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(trained_like_checkpoint), "--format", fmt, "--dynamic-batch", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "batch sizes [1, 7]" in printed and ": ok" in printed
    written = out.with_suffix(".xml") if fmt == "openvino" else out
    model = get_model(trained_like_checkpoint)
    batch = sample_batch(model.weights_info.preprocess)
    assert batch.shape == (10, 3, 299, 299)
    check = verify_export(model, load_runner(written, fmt), batch, (3,))  # a size the export never saw
    assert check.passed and check.max_abs_diff <= FP32_TOLERANCE * check.logit_range and check.logit_range > 1.0


def test_a_fixed_batch_export_is_checked_at_its_size(trained_like_checkpoint, tmp_path, capsys):
    out = tmp_path / "fixed.onnx"
    assert main(["export", str(trained_like_checkpoint), "--format", "onnx", "--batch-size", "3",
                 "--out", str(out)]) == 0
    assert "batch sizes [3]" in capsys.readouterr().out


def test_an_export_that_disagrees_is_removed_and_fails(trained_like_checkpoint, tmp_path, capsys, monkeypatch):
    # Simulate an exporter bug: the runner returns logits that are slightly off.
    import inceptionv3.export as export

    real = export.load_runner
    monkeypatch.setattr(export, "load_runner", lambda path, fmt: (lambda x: real(path, fmt)(x) + 0.05))
    out = tmp_path / "bad.pt"
    assert main(["export", str(trained_like_checkpoint), "--format", "torchscript", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "failed its check and was removed" in err and "5.00e-02" in err  # 0.05 > 1e-4 of the +-120 range
    assert not out.exists()


def test_missing_extras_name_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(ExportError, match=r"openvino not installed: pip install 'inceptionv3\[openvino\]'"):
        require("openvino", extra="openvino")


def test_the_check_batch_is_made_of_real_photo_crops():
    model = get_model("inception_v3.tv_in1k", pretrained=False)
    batch = sample_batch(model.weights_info.preprocess)
    assert batch.shape[0] == 10 and torch.equal(batch[5:], batch[:5].flip(-1))  # 5 crops and their mirrors
    assert -3 < float(batch.min()) < -1 and 1 < float(batch.max()) < 3  # ImageNet-normalised photo pixels
