import subprocess
import sys

import torch
import torchvision
from conftest import calibrate, max_abs_diff

from inceptionv3 import get_model
from inceptionv3.cli import main


def test_list_and_filter(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "inception-v3_3rdparty_8xb32_in1k" in out and "inception_v3.keras_in1k" in out
    assert main(["list", "*gluon*"]) == 0
    assert capsys.readouterr().out.strip().startswith("inception_v3.gluon_in1k")


def test_info_prints_the_model_card(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path))
    assert main(["info", "inception-v3_3rdparty_8xb32_in1k"]) == 0
    card = capsys.readouterr().out
    for fact in ("23,834,568", "5.713 G", "5.745 G", "77.570", "93.580", "ResizeEdge(342, short)",
                 "dcd4d910", "inception_v3_google-0cc3c7bd.pth", "not downloaded", str(tmp_path)):
        assert fact in card, fact


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["info", "resnet50"]) == 2
    assert "unknown model 'resnet50'" in capsys.readouterr().err


def test_download_failure_exits_2_with_the_guidance(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path))
    monkeypatch.setenv("INCEPTIONV3_OFFLINE", "1")
    assert main(["download", "inception_v3.tv_in1k"]) == 2
    err = capsys.readouterr().err
    assert "INCEPTIONV3_OFFLINE" in err and "--weights PATH" in err


def test_convert_folds_and_round_trips(tmp_path, imagenet_batch, capsys):
    torch.manual_seed(5)
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    reference = calibrate(reference, imagenet_batch, seed=5)
    src, dst = tmp_path / "google.pth", tmp_path / "google.safetensors"
    torch.save(reference.state_dict(), src)
    assert main(["convert", str(src), str(dst), "--source", "torchvision", "--transform-input"]) == 0
    assert "folded" in capsys.readouterr().err
    converted = get_model(dst)
    assert converted.weights_info.preprocess.name == "torchvision"
    assert converted.weights_info.class_names[1] == "goldfish, Carassius auratus"
    with torch.no_grad():
        assert max_abs_diff(converted(imagenet_batch), reference(imagenet_batch)) <= 3e-4


def test_convert_bad_file_names_it(tmp_path, capsys):
    src = tmp_path / "junk.pth"
    src.write_bytes(b"junk")
    assert main(["convert", str(src), str(tmp_path / "out.safetensors")]) == 2
    assert str(src) in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "inceptionv3", "list"], capture_output=True, text=True, check=True)
    assert "inception_v3.tv_in1k" in result.stdout


def test_version_is_the_installed_one(capsys):
    import importlib.metadata

    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"inceptionv3 {importlib.metadata.version('inceptionv3')}"


def test_our_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import pytest

    from inceptionv3 import cli
    from inceptionv3.errors import CheckpointError

    def user_error(args):
        raise CheckpointError("weights.pth: not a checkpoint")

    def bug(args):
        raise KeyError("a real bug")

    monkeypatch.setattr(cli, "_cmd_list", user_error)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "inceptionv3 list: error: weights.pth: not a checkpoint\n"
    monkeypatch.setattr(cli, "_cmd_list", bug)
    with pytest.raises(KeyError, match="a real bug"):
        main(["list"])


def test_every_training_option_is_one_flag_that_reaches_the_config(monkeypatch, tmp_path, capsys):
    import dataclasses

    from inceptionv3 import train
    from inceptionv3.cli import build_parser

    seen = []

    class FakeTrainer:
        def __init__(self, config):
            seen.append(config)
            self.config = config

        def run(self):
            return {"step": 3, "best_val_top1": -1.0}

    monkeypatch.setattr(train, "Trainer", FakeTrainer)
    assert main(["train", "--data", "d.csv.gz", "--out", str(tmp_path), "--batch-size", "7", "--no-flip",
                 "--recipe", "finetune", "--lr", "0.5", "--sync-bn", "--max-steps", "3"]) == 0
    config = seen[0]
    assert (config.batch_size, config.flip, config.recipe, config.lr, config.sync_bn, config.max_steps) == (
        7, False, "finetune", 0.5, True, 3)
    defaults = build_parser().parse_args(["train"])
    for field in dataclasses.fields(train.TrainConfig):
        if field.name != "extra":  # every option has its flag, with the dataclass's own default
            assert getattr(defaults, field.name) == field.default, field.name
