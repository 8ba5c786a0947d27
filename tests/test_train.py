"""Training: recipes, the optimizer and schedule, synchronised BN, exact resume after SIGKILL, DDP against one
process, fine-tuning that keeps class names. Runs are short and real: digits and Omniglot at 75 px."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, torchrun
from PIL import Image, ImageDraw
from safetensors import safe_open

from inceptionv3 import get_model, inference_model
from inceptionv3.cli import main
from inceptionv3.data import load_dataset, split_dataset
from inceptionv3.decode import load_image
from inceptionv3.errors import InputError
from inceptionv3.recipes import (
    RECIPES,
    SyncBatchNorm2d,
    TFRMSprop,
    convert_sync_batchnorm,
    learning_rate,
    random_resized_crop,
)
from inceptionv3.run_dir import STATE_FILE, atomic_torch_save
from inceptionv3.train import TrainConfig, Trainer
from inceptionv3.visualize import save_curves

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
    assert all(r.citation for r in RECIPES.values())


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


def test_sync_batchnorm_keeps_the_models_dtype():
    """Built in the default float32, the synchronised layers ran a float64 run's BN in float32."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).double()
    convert_sync_batchnorm(model)
    assert type(model[1]) is SyncBatchNorm2d
    assert {name: t.dtype for name, t in model[1].state_dict().items() if t.is_floating_point()} == {
        name: torch.float64 for name in ("weight", "bias", "running_mean", "running_var")}
    assert model(torch.randn(2, 3, 5, 5, dtype=torch.float64)).dtype == torch.float64


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
    """Every tensor of a run's state: weights, BN buffers, the EMA's copy and the optimizer's buffers."""
    state = torch.load(run / STATE_FILE, weights_only=True)
    tensors = {f"model.{k}": v for k, v in state["model"].items()}
    tensors.update({f"ema.{k}": v for k, v in (state["ema"] or {}).items()})
    for index, buffers in state["optimizer"]["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v for k, v in buffers.items() if torch.is_tensor(v)})
    return tensors




@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    # The paper recipe: dropout (RNG), RMSProp and EMA state, label smoothing, seeded augmentation.
    settings = ["--max-steps", "7", "--save-every", "3", "--crop-scale", "0.5"]
    straight_run = subprocess.Popen(_train_args(tmp_path / "straight", *settings), env=QUIET_ENV,  # beside the
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # killed run: 1 core each
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_args(killed, *settings), env=QUIET_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill as soon as step 4 is logged: after the save at 3, before the end at 7
        log = killed / "log.jsonl"
        if log.exists() and any(json.loads(line)["step"] >= 4 for line in log.read_text().splitlines() if line):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(killed / STATE_FILE, weights_only=True)["step"]
    assert saved in (3, 6), "the kill must land mid-run"
    subprocess.run([sys.executable, "-m", "inceptionv3", "train", "--resume", str(killed)], env=QUIET_ENV,
                   check=True, capture_output=True, timeout=300)
    assert straight_run.wait(timeout=300) == 0
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
    assert steps == list(range(1, 8)), "the log is cut back to the save and continues without duplicates"


def test_a_kill_during_a_save_keeps_the_previous_state(tmp_path, monkeypatch):
    path = tmp_path / STATE_FILE
    atomic_torch_save({"step": 3}, path)

    def dies_half_way(obj, target):
        Path(target).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 6}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 3}


#: Trains each recipe in the list it is given, in one process group under torchrun (or in one process): one start-up
#: for all three recipes.
RUN_RECIPES = """
import json, sys
import torch.distributed as dist
from inceptionv3.runtime import init_distributed
from inceptionv3.train import TrainConfig, Trainer
init_distributed()
for config in json.loads(sys.argv[1]):
    Trainer(TrainConfig(**config)).run()
if dist.is_initialized():
    dist.destroy_process_group()
"""

#: Learning rates at which 10 steps from a fresh Inception V3 at 75 px are not chaotic. At the recipes' own rates
#: (paper 0.011, mmpretrain 0.0031 for a global batch of 8) the first conv's gradient norm is ~1000 (batch norm at
#: initialisation) and a last-bit difference grows ~200x a step: ONE process run with 1 and with 2 threads ends
#: 10 steps later with BN running variances ~3 apart, so no distributed run could match to 1e-9 there. At these
#: rates rounding stays at rounding size (1 thread against 2, same process: 2e-10 at most), while every path of
#: each recipe still runs (clipping, smoothing, EMA, the schedules, the backbone's lower rate, synchronised BN)
#: and any arithmetic difference between the runs shows: float32 BN statistics gave 4.8e-7 here.
# mmpretrain-8xb32 (plain SGD) is left out: finetune runs the same optimizer with parameter groups on top, and
# each recipe costs a third of this test's 40 s.
DDP_LEARNING_RATES = {"paper": 1e-4, "finetune": 1e-6}


@pytest.mark.slow
def test_two_processes_match_one_process_with_twice_the_batch(trained_like_checkpoint, tmp_path):
    """2 processes x 4 images against 1 x 8, 2 steps of the paper and fine-tuning recipes in float64 (fp32
    rounding alone would grow past any useful bound): every tensor agrees to 1e-9, BN buffers, EMA and optimizer
    state included."""
    script = tmp_path / "run_recipes.py"
    script.write_text(RUN_RECIPES)

    def config(recipe: str, name: str, batch_size: int) -> dict:
        return dict(data=str(DIGITS), out=str(tmp_path / f"{name}-{recipe}"), recipe=recipe,
                    lr=DDP_LEARNING_RATES[recipe], img_size=75, max_steps=2, batch_size=batch_size, sync_bn=True,
                    weights=str(trained_like_checkpoint) if RECIPES[recipe].from_pretrained else None,
                    dropout=0.0, augment=False, float64=True, workers=1, log_every=1)

    def configs(name: str, batch_size: int) -> str:
        return json.dumps([config(recipe, name, batch_size) for recipe in DDP_LEARNING_RATES])

    with open(tmp_path / "one.log", "wb") as log:  # the one-process runs share the 2 cores with torchrun's two
        one = subprocess.Popen([sys.executable, str(script), configs("one", 8)], env=QUIET_ENV, stdout=log,
                               stderr=subprocess.STDOUT)
        two = subprocess.run(torchrun(str(script), configs("two", 4)), env=QUIET_ENV, capture_output=True,
                             timeout=900)
        assert one.wait(timeout=900) == 0, (tmp_path / "one.log").read_text()[-3000:]
    assert two.returncode == 0, two.stderr.decode()[-3000:]
    for recipe in DDP_LEARNING_RATES:
        one_run, two_run = tmp_path / f"one-{recipe}", tmp_path / f"two-{recipe}"
        resolved = json.loads((two_run / "config.json").read_text())
        assert resolved["processes"] == 2 and resolved["global_batch"] == 8 and resolved["total_steps"] == 2
        a, b = _weights(one_run), _weights(two_run)
        assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a)
        if RECIPES[recipe].ema_decay:
            assert any(k.startswith("ema.") for k in a)
        worst, name = max((float((a[k] - b[k]).abs().max()), k) for k in a if a[k].is_floating_point())
        assert worst <= 1e-9, f"{recipe}: {name} differs by {worst:.2e}"
        assert all(a[k].dtype == torch.float64 for k in a if a[k].is_floating_point()), "float64 throughout"
        start = Trainer(TrainConfig(**config(recipe, "start", 8))).model  # the seeded starting weights
        moved = max(float((a[f"model.{k}"] - v.detach()).abs().max()) for k, v in start.named_parameters())
        assert moved > 1e-6, f"{recipe}: training must move the weights far more than 1e-9 ({moved:.2e})"
        losses = [[json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
                  for run in (one_run, two_run)]
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)  # logged in float32
        assert len(losses[0]) == 2


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


def test_runs_refuse_to_overwrite_and_resume_needs_the_same_world(tmp_path, capsys):
    config = TrainConfig(data=str(DIGITS), out=str(tmp_path / "run"), img_size=75, batch_size=8, max_steps=1,
                         workers=1, augment=False)
    Trainer(config).run()
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(config)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0  # a finished run says so and is left alone
    assert "has finished: step 1 of 1" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    state["world"] = 2
    torch.save(state, tmp_path / "run" / STATE_FILE)
    with pytest.raises(InputError, match="trained on 2 processes"):
        Trainer.resume(tmp_path / "run")


def test_learning_rate_scales_with_the_batch_size(tmp_path):
    """In one process; the torchrun test checks the global batch of two."""
    trainer = Trainer(TrainConfig(data=str(DIGITS), out=str(tmp_path / "r"), recipe="mmpretrain-8xb32",
                                  img_size=75, batch_size=64, max_steps=1, workers=1))
    assert trainer.base_lr == pytest.approx(0.1 * 64 / 256)
    assert trainer.total_steps == 1 and trainer.steps_per_epoch == 1797 // 64
    assert math.isclose(trainer.optimizer.param_groups[0]["momentum"], 0.9)


def _eager_top1(weights: Path, dataset) -> float:
    """Top-1 (%) of a weights file on a dataset, computed here: the file's own preprocessing and a plain forward
    pass, none of the package's evaluation code."""
    model = get_model(weights).eval()
    preprocess = model.weights_info.preprocess
    crops = np.stack([preprocess.crop_image(load_image(item, name=name))
                      for item, name in zip(dataset.items, dataset.names, strict=True)])
    with torch.no_grad():
        predicted = model(preprocess.normalize(crops)).argmax(1).numpy()
    return 100.0 * float(np.mean(predicted == np.asarray(dataset.labels)))


@pytest.mark.slow
def test_validation_scores_the_weights_being_trained_and_leaves_no_export(tmp_path, monkeypatch):
    """Two fine-tuning runs from one checkpoint that already has the dataset's 10 classes. An export cached by the
    checkpoint file's hash made the second run score the first run's weights; each logged accuracy must be its own
    weights', computed in eager, with nothing written to the cache."""
    from conftest import calibrate

    from inceptionv3 import InceptionV3, save_canonical
    from inceptionv3.preprocess import PRESETS

    home = tmp_path / "home"
    monkeypatch.setenv("INCEPTIONV3_HOME", str(home))
    digits = load_dataset(DIGITS)
    preprocess = PRESETS["mmpretrain"].with_crop(75)
    some = np.random.default_rng(0).permutation(len(digits))[:64]
    torch.manual_seed(0)  # random convolutions, BN measured on digits, and a zero head: class 0 for every image
    start = calibrate(InceptionV3(num_classes=10), preprocess.normalize(np.stack(
        [preprocess.crop_image(load_image(digits.items[i], name=digits.names[i])) for i in some])))
    torch.nn.init.zeros_(start.fc.weight)
    checkpoint = tmp_path / "start.safetensors"
    save_canonical(start, checkpoint, source="inceptionv3", class_names=list(digits.class_names),
                   preprocess="mmpretrain@75")
    val = split_dataset(digits, 0.05, seed=0)[1]
    accuracies = {"start": _eager_top1(checkpoint, val)}
    for lr in (0.01, 0.003):
        run = tmp_path / f"lr{lr}"
        trainer = Trainer(TrainConfig(data=str(DIGITS), out=str(run), recipe="finetune", img_size=75, batch_size=8,
                                      weights=str(checkpoint), max_steps=8, val_split=0.05, lr=lr, freeze="backbone",
                                      workers=2, log_every=1, augment=False))
        assert trainer.model.num_classes == 10 and trainer.model.weights_info.path  # the checkpoint's own head
        trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
        assert trainable == {"fc.weight", "fc.bias"}  # --freeze backbone: the head alone (no aux branch at 75 px)
        assert len(val) == trainer.resolved_config()["val_images"]
        trainer.run()
        validation = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val_top1" in r]
        assert [r["step"] for r in validation] == [8]
        accuracies[lr] = _eager_top1(run / "last.safetensors", val)
        assert validation[0]["val_top1"] == pytest.approx(accuracies[lr], abs=1e-9), (lr, accuracies)
    assert len(set(accuracies.values())) == 3, f"the runs must differ, or a stale score could pass: {accuracies}"
    compiled = home / "compiled"
    assert not compiled.exists() or not any(compiled.iterdir()), sorted(compiled.iterdir())


def test_written_files_get_the_umasks_permissions(tmp_path):
    """Not mkstemp's 0600: others may read a run's files when the umask says so (0o027 here, so 0640)."""
    previous = os.umask(0o027)
    try:
        Trainer(TrainConfig(data=str(DIGITS), out=str(tmp_path / "run"), recipe="mmpretrain-8xb32", img_size=75,
                            batch_size=8, max_steps=1, val_split=0.02, workers=2, augment=False)).run()
    finally:
        os.umask(previous)
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == sorted(["best.safetensors", "config.json", "curves.png", "last.safetensors", "log.jsonl",
                              STATE_FILE])  # no temporary file left behind
    for name in written:
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o640, name


def _drawn_text(monkeypatch) -> list[tuple[tuple[float, float, float, float], str]]:
    """Records every text drawn with Pillow, with its bounding box."""
    drawn = []
    real_text = ImageDraw.ImageDraw.text

    def text(self, xy, text, *args, **kwargs):
        drawn.append((self.textbbox(xy, text, font=kwargs.get("font")), text))
        return real_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    return drawn


def _overlapping(drawn) -> list[tuple[str, str]]:
    return [(a, b) for i, (box_a, a) in enumerate(drawn) for box_b, b in drawn[i + 1:]
            if box_a[0] < box_b[2] and box_b[0] < box_a[2] and box_a[1] < box_b[3] and box_b[1] < box_a[3]]


@pytest.mark.parametrize("run", ["one step", "twenty steps"])
def test_training_curves_stay_on_logged_steps_and_keep_labels_apart(run, tmp_path, monkeypatch):
    if run == "one step":
        records = [{"step": 1, "epoch": 0.01, "loss": 2.3, "lr": 0.01, "img_per_s": 3.0},
                   {"step": 1, "epoch": 0.01, "val_top1": 20.0, "val_top5": 100.0}]
    else:  # validation at steps 10 and 20 only, top-1 ending half a point under top-5
        records = [{"step": s, "epoch": s / 10, "loss": 2.3 / s, "lr": 0.01 * 0.94 ** (s // 10), "img_per_s": 30.0}
                   for s in range(1, 21)]
        records[9:10] += [{"step": 10, "epoch": 1.0, "val_top1": 60.0, "val_top5": 90.0}]
        records += [{"step": 20, "epoch": 2.0, "val_top1": 99.5, "val_top5": 100.0}]
    drawn = _drawn_text(monkeypatch)
    save_curves(tmp_path / "curves.png", records, title="paper on digits")
    logged = {f"step {r['step']}" for r in records}
    step_labels = {text for _, text in drawn if text.startswith("step ")}
    assert step_labels <= logged and step_labels >= {f"step {min(r['step'] for r in records)}"}, step_labels
    accuracy_ticks = [float(text) for box, text in drawn if box[0] > 980 and text.replace(".", "").isdigit()]
    assert len(accuracy_ticks) == 5 and max(accuracy_ticks) <= 100 and min(accuracy_ticks) >= 0, accuracy_ticks
    assert {"top-1", "top-5"} <= {text for _, text in drawn}
    assert not _overlapping(drawn), _overlapping(drawn)
    with Image.open(tmp_path / "curves.png") as picture:
        assert picture.size == (1500, 480)


def test_the_saved_rng_is_the_training_rngs_before_validation_draws(tmp_path, monkeypatch):
    """Validation builds a model for best.safetensors, which draws from the RNG; the state saved beside it must be
    the one training continues from, or a resumed run draws other dropout masks."""
    seen = []
    real = Trainer._validate

    def validate(self):
        seen.append(torch.get_rng_state())
        real(self)

    monkeypatch.setattr(Trainer, "_validate", validate)
    config = TrainConfig(data=str(DIGITS), out=str(tmp_path / "run"), recipe="mmpretrain-8xb32", img_size=75,
                         batch_size=8, max_steps=1, val_split=0.02, workers=1)
    Trainer(config).run()
    saved = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)["rng"][0][0]
    assert len(seen) == 1 and torch.equal(saved, seen[0])
    with pytest.raises(InputError, match="--log-every must be at least 1"):
        Trainer(TrainConfig(data=str(DIGITS), out=str(tmp_path / "other"), log_every=0))
