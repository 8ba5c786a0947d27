"""Training: recipes, the optimizer and schedule, synchronised BN, exact resume after SIGKILL, DDP against one
process, fine-tuning that keeps class names. Runs are short and real: digits and Omniglot at 75 px."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image
from safetensors import safe_open

from inceptionv3 import inference_model
from inceptionv3.data import load_dataset
from inceptionv3.train import (
    RECIPES,
    STATE_FILE,
    SyncBatchNorm2d,
    TFRMSprop,
    TrainConfig,
    Trainer,
    _atomic_torch_save,
    learning_rate,
    random_resized_crop,
)

DIGITS = SHARED_DATA / "train" / "digits.csv.gz"
OMNIGLOT = SHARED_DATA / "train" / "omniglot_images_background_small1.zip"
QUIET_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_recipes_state_their_sources_numbers():
    paper, mm, finetune = RECIPES["paper"], RECIPES["mmpretrain-8xb32"], RECIPES["finetune"]
    assert (paper.optimizer, paper.rmsprop_decay, paper.rmsprop_eps, paper.lr) == ("rmsprop-tf", 0.9, 1.0, 0.045)
    assert (paper.decay_rate, paper.decay_epochs, paper.label_smoothing, paper.grad_clip) == (0.94, 2.0, 0.1, 2.0)
    assert paper.aux_weight == 0.4 and paper.ema_decay and paper.augment
    assert (mm.optimizer, mm.lr, mm.momentum, mm.weight_decay, mm.reference_batch) == ("sgd", 0.1, 0.9, 1e-4, 256)
    assert (mm.schedule, mm.epochs) == ("cosine", 100)
    assert finetune.from_pretrained and finetune.backbone_lr_scale < 1
    assert all(r.source for r in RECIPES.values())


def test_learning_rate_is_a_function_of_the_step():
    paper, mm = RECIPES["paper"], RECIPES["mmpretrain-8xb32"]
    # 10 steps an epoch: x0.94 after every 2 epochs (staircase).
    assert [learning_rate(paper, 0.045, s, 10, 1000) for s in (0, 19, 20, 39, 40)] == pytest.approx(
        [0.045, 0.045, 0.045 * 0.94, 0.045 * 0.94, 0.045 * 0.94 ** 2])
    assert learning_rate(mm, 0.1, 0, 10, 100) == 0.1
    assert learning_rate(mm, 0.1, 50, 10, 100) == pytest.approx(0.05)
    assert learning_rate(mm, 0.1, 100, 10, 100) == pytest.approx(0.0, abs=1e-12)


def test_tf_rmsprop_follows_tensorflows_update():
    torch.manual_seed(0)
    weight = torch.randn(5, requires_grad=True)
    optimizer = TFRMSprop([weight], lr=0.1, decay=0.9, momentum=0.9, eps=1.0)
    w, ms, mom = weight.detach().numpy().astype(np.float64).copy(), np.ones(5), np.zeros(5)
    for step in range(3):
        grad = torch.randn(5, generator=torch.Generator().manual_seed(step))
        weight.grad = grad.clone()
        optimizer.step()
        g = grad.numpy().astype(np.float64)
        ms = 0.9 * ms + 0.1 * g * g  # TF: ms initialised to 1, eps inside the root, lr inside the momentum
        mom = 0.9 * mom + 0.1 * g / np.sqrt(ms + 1.0)
        w = w - mom
    np.testing.assert_allclose(weight.detach().numpy(), w, rtol=1e-5)


def test_sync_batchnorm_on_one_process_is_batchnorm():
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(6)
    reference.weight.data.uniform_(0.5, 1.5)
    reference.bias.data.normal_()
    synced = SyncBatchNorm2d(6)
    synced.load_state_dict(reference.state_dict())
    x = (torch.randn(4, 6, 5, 5) * 3 + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    for _ in range(2):
        out_ref, out = reference(x), synced(x2)
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
        (out_ref * torch.arange(150.0).view(1, 6, 5, 5)).sum().backward()
        (out * torch.arange(150.0).view(1, 6, 5, 5)).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(synced.weight.grad, reference.weight.grad, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(synced.running_var, reference.running_var)
    torch.testing.assert_close(synced.running_mean, reference.running_mean)


def test_augmentation_is_seeded_per_sample():
    rgb = np.asarray(Image.open(SHARED_DATA / "images" / "felix_220_cheetah.jpg").convert("RGB"))
    first = random_resized_crop(rgb, 75, np.random.default_rng([0, 1, 5]))
    again = random_resized_crop(rgb, 75, np.random.default_rng([0, 1, 5]))
    other = random_resized_crop(rgb, 75, np.random.default_rng([0, 2, 5]))
    assert first.shape == (75, 75, 3) and np.array_equal(first, again) and not np.array_equal(first, other)
    thin = random_resized_crop(rgb[:10], 75, np.random.default_rng(0))  # every try fails: the centre fallback
    assert thin.shape == (75, 75, 3)


def _train_args(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inceptionv3", "train", "--data", str(DIGITS), "--img-size", "75",
            "--batch-size", "8", "--log-every", "1", "--workers", "2", "--out", str(out), *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / STATE_FILE, weights_only=True)
    return {**{f"model.{k}": v for k, v in state["model"].items()}, **{f"ema.{k}": v for k, v in state["ema"].items()}}


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    # The paper recipe: dropout (RNG), RMSProp and EMA state, label smoothing, seeded augmentation.
    settings = ["--max-steps", "10", "--save-every", "3", "--crop-scale", "0.5"]
    subprocess.run(_train_args(tmp_path / "straight", *settings), env=QUIET_ENV, check=True, capture_output=True,
                   timeout=300)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_args(killed, *settings), env=QUIET_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill as soon as step 5 is logged: after the save at 3, before the one at 6
        log = killed / "log.jsonl"
        if log.exists() and any(json.loads(line)["step"] >= 5 for line in log.read_text().splitlines() if line):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(killed / STATE_FILE, weights_only=True)["step"]
    assert saved in (3, 6) and saved < 10, "the kill must land mid-run"
    subprocess.run([sys.executable, "-m", "inceptionv3", "train", "--resume", str(killed)], env=QUIET_ENV,
                   check=True, capture_output=True, timeout=300)
    straight, resumed = _weights(tmp_path / "straight"), _weights(killed)
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    # The published weights too (compared by content: safetensors orders its metadata differently per process).
    files = [safe_open(run / "last.safetensors", "pt") for run in (tmp_path / "straight", killed)]
    assert files[0].metadata() == files[1].metadata() and set(files[0].keys()) == set(files[1].keys())
    for name in files[0].keys():
        assert torch.equal(files[0].get_tensor(name), files[1].get_tensor(name)), name
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11)), "the log is cut back to the save and continues without duplicates"


def test_a_kill_during_a_save_keeps_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / STATE_FILE
    _atomic_torch_save({"step": 3}, path)

    def dies_half_way(obj, target):
        Path(target).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        _atomic_torch_save({"step": 6}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 3}


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    # In float64: at 75 px a fresh network's BN layers see few values per channel, and fp32 rounding alone is
    # amplified to ~1e-2 after 3 steps (a single process in fp32 against itself in float64 differs as much),
    # so only float64 tells whether the distributed arithmetic is the same as one process's.
    common = ["--data", str(DIGITS), "--img-size", "75", "--max-steps", "3", "--sync-bn", "--dropout", "0",
              "--no-augment", "--log-every", "1", "--workers", "1", "--float64"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "inceptionv3", "train", *common, "--batch-size", "8", "--out", str(one)],
                   env=QUIET_ENV, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
                    "-m", "inceptionv3", "train", *common, "--batch-size", "4", "--out", str(two)],
                   env=QUIET_ENV, check=True, capture_output=True, timeout=300)
    config = json.loads((two / "config.json").read_text())
    assert config["processes"] == 2 and config["global_batch"] == 8
    a, b = _weights(one), _weights(two)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, worst
    start = Trainer(TrainConfig(data=str(DIGITS), out=str(tmp_path / "start"), img_size=75, batch_size=8,
                                sync_bn=True, dropout=0.0, float64=True)).model.state_dict()  # seeded start
    moved = max(float((a[f"model.{k}"] - v).abs().max()) for k, v in start.items() if v.is_floating_point())
    assert moved > 1000 * max(worst, 1e-9), f"training must move the weights far more than the runs differ ({moved})"
    losses = [[json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()] for run in (one, two)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_finetune_new_head_lower_backbone_lr_frozen_bn_and_class_names(trained_like_checkpoint, tmp_path):
    config = TrainConfig(data=str(OMNIGLOT), out=str(tmp_path / "ft"), recipe="finetune",
                         weights=str(trained_like_checkpoint), img_size=75, batch_size=8, max_steps=2,
                         val_split=0.02, freeze="bn", workers=2, log_every=1)
    trainer = Trainer(config)
    assert trainer.model.num_classes == 5 and trainer.model.fc.out_features == 5
    source = torch.load(trained_like_checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(trainer.model.Conv2d_1a_3x3.conv.weight, source["backbone.Conv2d_1a_3x3.conv.weight"])
    scales = {g["lr_scale"] for g in trainer.optimizer.param_groups}
    assert scales == {0.1, 1.0} and trainer.base_lr == pytest.approx(0.01 * 8 / 256)
    head = [g for g in trainer.optimizer.param_groups if g["lr_scale"] == 1.0][0]["params"]
    assert {id(p) for p in head} == {id(trainer.model.fc.weight), id(trainer.model.fc.bias)}
    running = trainer.model.Mixed_7c.branch_pool.bn.running_mean.clone()
    bn_weight = trainer.model.Mixed_7c.branch_pool.bn.weight.clone()
    conv_before = trainer.model.Mixed_7c.branch_pool.conv.weight.clone()
    trainer.run()
    assert torch.equal(trainer.model.Mixed_7c.branch_pool.bn.running_mean, running)  # frozen BN keeps its stats
    assert torch.equal(trainer.model.Mixed_7c.branch_pool.bn.weight, bn_weight)
    assert not torch.equal(trainer.model.Mixed_7c.branch_pool.conv.weight, conv_before)

    run = Path(config.out)
    assert {"config.json", "log.jsonl", "last.safetensors", "best.safetensors", STATE_FILE, "curves.png"} <= {
        p.name for p in run.iterdir()}
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["recipe"] == "finetune" and resolved["class_names"][0] == "Balinese"
    assert resolved["recipe_settings"]["backbone_lr_scale"] == 0.1 and resolved["total_steps"] == 2
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"step", "epoch", "loss", "lr", "img_per_s"} <= set(records[0]) and "val_top1" in records[-1]
    with safe_open(run / "last.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["class_names"]) == list(load_dataset(OMNIGLOT).class_names)
    assert metadata["preprocess"] == "mmpretrain@75"
    picture = load_dataset(OMNIGLOT).items[0]
    result = inference_model(run / "last.safetensors", picture)
    assert result["pred_class"] in {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert result["pred_scores"].shape == (5,)
    with Image.open(run / "curves.png") as curves:
        assert curves.size == (1500, 480)


def test_runs_refuse_to_overwrite_and_resume_needs_the_same_world(tmp_path):
    config = TrainConfig(data=str(DIGITS), out=str(tmp_path / "run"), img_size=75, batch_size=8, max_steps=1,
                         workers=1, augment=False)
    Trainer(config).run()
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(config)
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    state["world"] = 2
    torch.save(state, tmp_path / "run" / STATE_FILE)
    with pytest.raises(ValueError, match="trained on 2 processes"):
        Trainer.resume(tmp_path / "run")


def test_learning_rate_scales_with_the_global_batch(tmp_path):
    trainer = Trainer(TrainConfig(data=str(DIGITS), out=str(tmp_path / "r"), recipe="mmpretrain-8xb32",
                                  img_size=75, batch_size=64, max_steps=1, workers=1))
    assert trainer.base_lr == pytest.approx(0.1 * 64 / 256)
    assert trainer.total_steps == 1 and trainer.steps_per_epoch == 1797 // 64
    assert math.isclose(trainer.optimizer.param_groups[0]["momentum"], 0.9)
