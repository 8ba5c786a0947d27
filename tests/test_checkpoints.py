"""Parity with the reference libraries on identical, realistic weights, and the loading rules."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import random
import shutil
import sys
import time
import warnings
import zipfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import calibrate, max_abs_diff

from inceptionv3 import CheckpointError, InceptionV3, checkpoints, get_entry, get_model, read_checkpoint, save_canonical
from inceptionv3.checkpoints import fold_transform_input
from inceptionv3.errors import UnknownModelError


@pytest.fixture(scope="module")
def torchvision_plain(imagenet_batch):
    torch.manual_seed(1)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=True)
    return calibrate(model, imagenet_batch, seed=1)


@pytest.fixture(scope="module")
def torchvision_google_style(inception_batch, imagenet_batch):
    """Weights that expect [-1, 1] input, run by torchvision with transform_input=True."""
    torch.manual_seed(2)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    return calibrate(model, imagenet_batch, seed=2)


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(batch)


# --- torchvision -----------------------------------------------------------------------------


def test_torchvision_plain_parity(tmp_path, torchvision_plain, imagenet_batch):
    path = tmp_path / "tv.pth"
    torch.save(torchvision_plain.state_dict(), path)
    ours = get_model(path)
    assert ours.weights_info.source == "torchvision"
    assert ours.AuxLogits is None  # aux weights are dropped for inference unless asked for
    diff = max_abs_diff(logits(ours, imagenet_batch), logits(torchvision_plain, imagenet_batch))
    print(f"torchvision plain max |dlogit| = {diff:.2e}")
    assert diff <= 1e-4


def test_torchvision_transform_input_fold_is_exact_in_float64(torchvision_google_style, imagenet_batch):
    """The algebra: with no rounding to hide behind, the folded model equals transform + conv."""
    reference = copy.deepcopy(torchvision_google_style).double().eval()
    state = {k: v.double() if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    ours = InceptionV3(aux_logits=True).double().eval()
    ours.load_state_dict(fold_transform_input(state))
    diff = max_abs_diff(logits(ours, imagenet_batch.double()), logits(reference, imagenet_batch.double()))
    print(f"transform_input fold, float64: max |dlogit| = {diff:.2e}")
    assert diff <= 1e-9


def test_torchvision_transform_input_fold_parity_fp32(tmp_path, torchvision_google_style, imagenet_batch):
    path = tmp_path / "inception_v3_google.pth"
    torch.save(torchvision_google_style.state_dict(), path)
    ours = get_model(path, transform_input=True, aux_logits=True)
    reference = logits(torchvision_google_style, imagenet_batch)
    truth = logits(copy.deepcopy(torchvision_google_style).double(), imagenet_batch.double())
    diff = max_abs_diff(logits(ours, imagenet_batch), reference)
    reference_error = max_abs_diff(reference.double(), truth)
    our_error = max_abs_diff(logits(ours, imagenet_batch).double(), truth)
    print(f"transform_input fold, fp32: max |dlogit| vs torchvision = {diff:.2e}; vs float64 truth: "
          f"ours {our_error:.2e}, torchvision's own {reference_error:.2e}")
    # At fp32 both sides carry rounding noise of the same size (about 1e-4 on these logits, which
    # reach +-12): the fold must add no more error than torchvision's own fp32 arithmetic has.
    assert our_error <= 1.5 * reference_error + 1e-5
    assert diff <= 3e-4
    # Without the fold the same weights give clearly different logits: the transform matters.
    assert max_abs_diff(logits(get_model(path), imagenet_batch), reference) > 1e-2
    # The folded state_dict alone reproduces the logits (the vision#5376 trap).
    plain = InceptionV3(aux_logits=True)
    plain.load_state_dict(ours.state_dict())
    assert torch.equal(logits(plain, imagenet_batch), logits(ours, imagenet_batch))


def test_fold_only_touches_the_first_conv_and_its_bn_mean(torchvision_google_style):
    state = torchvision_google_style.state_dict()
    folded = fold_transform_input(state)
    changed = {k for k in state if not torch.equal(state[k], folded[k])}
    assert changed == {"Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_mean"}


# --- timm -------------------------------------------------------------------------------------

TIMM_TAGS = ["inception_v3.tv_in1k", "inception_v3.tf_in1k", "inception_v3.tf_adv_in1k", "inception_v3.gluon_in1k"]


def test_timm_parity(tmp_path, torchvision_plain, imagenet_batch):
    """timm's four inception_v3 tags build one network (the same keys and shapes), so one of them at parity
    covers the others' files."""
    shapes = [{k: tuple(v.shape) for k, v in timm.create_model(tag, pretrained=False).state_dict().items()}
              for tag in TIMM_TAGS]
    assert all(s == shapes[0] for s in shapes[1:])
    tag = TIMM_TAGS[0]
    reference = timm.create_model(tag, pretrained=False).eval()
    trunk = {k: v for k, v in torchvision_plain.state_dict().items() if not k.startswith("AuxLogits.")}
    reference.load_state_dict(trunk)
    path = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), path)  # timm's own key names
    ours = get_model(path, source="timm")
    diff = max_abs_diff(logits(ours, imagenet_batch), logits(reference, imagenet_batch))
    print(f"timm {tag} max |dlogit| = {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("tag", ["inception_v3.tf_in1k", "inception_v3.tf_adv_in1k"])
def test_timm_release_files_with_background_class(tmp_path, tag, torchvision_plain, imagenet_batch):
    """timm's GitHub release .pth files for TF ports keep TensorFlow's 1001-way head."""
    reference = timm.create_model(tag, pretrained=False, num_classes=1001).eval()
    trunk = {k: v for k, v in torchvision_plain.state_dict().items() if not k.startswith(("AuxLogits.", "fc."))}
    reference.load_state_dict(trunk, strict=False)
    path = tmp_path / "tf_inception_v3.pth"
    torch.save(reference.state_dict(), path)
    ours = get_model(path)
    assert ours.num_classes == 1000
    assert any("background" in note for note in ours.weights_info.notes)
    diff = max_abs_diff(logits(ours, imagenet_batch), logits(reference, imagenet_batch)[:, 1:])
    assert diff <= 1e-4


# --- Keras ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_reference(inception_batch):
    """A Keras 3 InceptionV3 holding realistic weights (BN stats from real photos, no gamma)."""
    import keras

    source = calibrate(InceptionV3(count_include_pad=False), inception_batch, seed=3, affine=False)
    state = source.state_dict()
    model = keras.applications.InceptionV3(weights=None, classifier_activation=None)

    def number(layer):
        tail = layer.name.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    convs = sorted((layer for layer in model.layers if type(layer).__name__ == "Conv2D"), key=number)
    bns = sorted((layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"), key=number)
    blocks = [n for n, m in source.named_modules() if hasattr(m, "conv") and hasattr(m, "bn")]
    for prefix, conv, bn in zip(blocks, convs, bns, strict=True):
        conv.set_weights([state[f"{prefix}.conv.weight"].permute(2, 3, 1, 0).numpy()])
        bn.set_weights([state[f"{prefix}.bn.{k}"].numpy() for k in ("bias", "running_mean", "running_var")])
    model.get_layer("predictions").set_weights([state["fc.weight"].T.numpy(), state["fc.bias"].numpy()])
    return model


def keras_logits(model, batch):
    out = model(batch.permute(0, 2, 3, 1).contiguous().numpy(), training=False)
    return torch.as_tensor(np.asarray(out.detach().cpu() if hasattr(out, "detach") else out))


def write_keras2_weights_file(model, path):
    """The layout of Keras 2's published inception_v3_weights_tf_dim_ordering_tf_kernels.h5:
    per-layer groups named from 1 (conv2d_1 ... conv2d_94), weight names like conv2d_1/kernel:0."""

    def keras2_name(layer):
        if type(layer).__name__ not in ("Conv2D", "BatchNormalization"):
            return layer.name
        base, _, tail = layer.name.rpartition("_")
        return f"{base}_{int(tail) + 1}" if tail.isdigit() else f"{layer.name}_1"

    weighted = [layer for layer in model.layers if layer.weights]
    with h5py.File(path, "w") as handle:
        for layer in weighted:
            name = keras2_name(layer)
            group = handle.create_group(name)
            weight_names = [f"{name}/{w.path.rsplit('/', 1)[-1]}:0" for w in layer.weights]
            group.attrs["weight_names"] = [w.encode() for w in weight_names]
            for weight_name, value in zip(weight_names, layer.get_weights(), strict=True):
                group.create_dataset(weight_name, data=value)
        handle.attrs["layer_names"] = [keras2_name(layer).encode() for layer in weighted]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.1.5"


@pytest.mark.parametrize("layout", ["full_model.h5", "model.weights.h5", "keras2_weights_tf_kernels.h5",
                                    "model.keras"])
def test_keras_parity(tmp_path, layout, keras_reference, inception_batch):
    path = tmp_path / layout
    if layout in ("full_model.h5", "model.keras"):  # .keras: Keras 3's default, a zip around model.weights.h5
        keras_reference.save(path)
    elif layout == "model.weights.h5":
        keras_reference.save_weights(path)
    else:
        write_keras2_weights_file(keras_reference, path)
    ours = get_model(path)
    assert ours.weights_info.source == "keras" and ours.count_include_pad is False
    assert ours.weights_info.preprocess.name == "keras"
    diff = max_abs_diff(logits(ours, inception_batch), keras_logits(keras_reference, inception_batch))
    print(f"keras {layout} max |dlogit| = {diff:.2e}")
    assert diff <= 1e-3


def test_a_keras_archive_whose_weights_unpack_to_far_more_than_its_size_is_refused(tmp_path):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", bytes(64 << 20))  # 64 MiB of zeros deflate to about 64 KiB
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match=r"bomb\.keras: model\.weights\.h5 claims 67,108,864 bytes.*zip bomb"):
        read_checkpoint(path)


# --- mmpretrain layout and the canonical format ----------------------------------------------------


def mmpretrain_checkpoint(state, class_names=None, old_meta=False):
    meta = {"epoch": 100, "mmpretrain_version": "1.2.0"}
    if class_names is not None:
        meta.update({"CLASSES": class_names} if old_meta else {"dataset_meta": {"classes": class_names}})
    return {"state_dict": {f"backbone.{k}": v for k, v in state.items()}, "meta": meta}


@pytest.mark.parametrize("old_meta", [False, True])
def test_mmpretrain_layout_prefix_meta_and_class_names(tmp_path, old_meta, torchvision_plain, imagenet_batch):
    trunk = {k: v for k, v in torchvision_plain.state_dict().items() if not k.startswith("AuxLogits.")}
    names = [f"class {i}" for i in range(1000)]
    path = tmp_path / "inception-v3_3rdparty_8xb32_in1k_20220615-dcd4d910.pth"
    torch.save(mmpretrain_checkpoint(trunk, names, old_meta), path)
    ours = get_model(path)
    assert ours.weights_info.source == "mmpretrain"
    assert ours.weights_info.class_names == tuple(names)
    assert ours.weights_info.preprocess.name == "mmpretrain"
    assert max_abs_diff(logits(ours, imagenet_batch), logits(torchvision_plain, imagenet_batch)) <= 1e-4

    canonical = tmp_path / "converted.safetensors"
    save_canonical(ours, canonical, source="mmpretrain", class_names=names, preprocess="mmpretrain")
    again = get_model(canonical)
    assert again.weights_info.class_names == tuple(names)
    assert again.weights_info.source == "mmpretrain"
    assert again.weights_info.preprocess.name == "mmpretrain"
    assert torch.equal(logits(again, imagenet_batch), logits(ours, imagenet_batch))


def test_canonical_format_keeps_the_pooling_convention(tmp_path, keras_reference, inception_batch):
    path = tmp_path / "k.weights.h5"
    keras_reference.save_weights(path)
    model = get_model(path)
    save_canonical(model, tmp_path / "k.safetensors", source="keras", preprocess="keras")
    again = get_model(tmp_path / "k.safetensors")
    assert again.count_include_pad is False
    assert torch.equal(logits(again, inception_batch), logits(model, inception_batch))


def test_zoo_name_with_a_local_file(tmp_path, torchvision_plain, imagenet_batch):
    trunk = {k: v for k, v in torchvision_plain.state_dict().items() if not k.startswith("AuxLogits.")}
    path = tmp_path / "local.pth"
    torch.save(mmpretrain_checkpoint(trunk), path)
    model = get_model("inception-v3_3rdparty_8xb32_in1k", pretrained=path)
    assert model.weights_info.name == "inception-v3_3rdparty_8xb32_in1k"
    assert model.weights_info.class_names[0] == "tench, Tinca tinca"
    assert max_abs_diff(logits(model, imagenet_batch), logits(torchvision_plain, imagenet_batch)) <= 1e-4


def test_fresh_model_and_new_head(tmp_path, torchvision_plain):
    fresh = get_model("inception_v3.keras_in1k", pretrained=False, num_classes=12)
    assert fresh.num_classes == 12 and fresh.count_include_pad is False
    path = tmp_path / "tv.pth"
    torch.save(torchvision_plain.state_dict(), path)
    tuned = get_model(path, num_classes=5)
    assert tuned.fc.out_features == 5 and tuned.weights_info.class_names is None
    assert torch.equal(tuned.Mixed_7c.branch_pool.conv.weight, torchvision_plain.Mixed_7c.branch_pool.conv.weight)


# --- loading rules ------------------------------------------------------------------------------


def test_strict_error_lists_missing_unexpected_and_wrong_shapes_and_names_the_file(tmp_path):
    state = InceptionV3().state_dict()
    del state["Mixed_6b.branch1x1.conv.weight"]
    state["Mixed_6b.extra.weight"] = torch.zeros(1)
    state["fc.bias"] = torch.zeros(999)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        get_model(path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys (1): Mixed_6b.branch1x1.conv.weight" in message
    assert "unexpected keys (1): Mixed_6b.extra.weight" in message
    assert "fc.bias: checkpoint (999,) vs model (1000,)" in message


class Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": InceptionV3().state_dict(), "payload": Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x89HDF\r\n\x1a\ngarbage"])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path)


def test_missing_file_directory_and_unknown_source(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)
    path = tmp_path / "x.pth"
    torch.save(InceptionV3().state_dict(), path)
    with pytest.raises(CheckpointError, match="unknown source 'caffe'"):
        read_checkpoint(path, source="caffe")
    with pytest.raises(UnknownModelError, match="neither a zoo model"):
        get_model("inception_v4")


def test_tf_slim_needs_tensorflow_or_says_what_to_install(tmp_path):
    path = tmp_path / "inception_v3.ckpt.index"
    path.write_bytes(b"\x00")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        with pytest.raises(CheckpointError, match="pip install tensorflow"):
            read_checkpoint(path)
    else:
        with pytest.raises(CheckpointError, match="not a readable Inception V3 TensorFlow checkpoint"):
            read_checkpoint(path)


# --- TF-slim name mapping (the file itself needs TensorFlow; the mapping does not) -------------

_SLIM_A = ["Branch_0/Conv2d_0a_1x1", "Branch_1/Conv2d_0a_1x1", "Branch_1/Conv2d_0b_5x5", "Branch_2/Conv2d_0a_1x1",
           "Branch_2/Conv2d_0b_3x3", "Branch_2/Conv2d_0c_3x3", "Branch_3/Conv2d_0b_1x1"]
_SLIM_C = ["Branch_0/Conv2d_0a_1x1", "Branch_1/Conv2d_0a_1x1", "Branch_1/Conv2d_0b_1x7", "Branch_1/Conv2d_0c_7x1",
           "Branch_2/Conv2d_0a_1x1", "Branch_2/Conv2d_0b_7x1", "Branch_2/Conv2d_0c_1x7", "Branch_2/Conv2d_0d_7x1",
           "Branch_2/Conv2d_0e_1x7", "Branch_3/Conv2d_0b_1x1"]
_SLIM_E = ["Branch_0/Conv2d_0a_1x1", "Branch_1/Conv2d_0a_1x1", "Branch_1/Conv2d_0b_1x3", "Branch_1/Conv2d_0b_3x1",
           "Branch_2/Conv2d_0a_1x1", "Branch_2/Conv2d_0b_3x3", "Branch_2/Conv2d_0c_1x3", "Branch_2/Conv2d_0d_3x1",
           "Branch_3/Conv2d_0b_1x1"]
# Scope names as tensorflow/models research/slim/nets/inception_v3.py creates them, in module order.
SLIM_SCOPES = (
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    + [f"Mixed_5b/{n}" for n in _SLIM_A]
    + [f"Mixed_5c/{n}" for n in _SLIM_A[:2] + ["Branch_1/Conv_1_0c_5x5"] + _SLIM_A[3:]]
    + [f"Mixed_5d/{n}" for n in _SLIM_A]
    + [f"Mixed_6a/{n}" for n in ["Branch_0/Conv2d_1a_1x1", "Branch_1/Conv2d_0a_1x1", "Branch_1/Conv2d_0b_3x3",
                                 "Branch_1/Conv2d_1a_1x1"]]
    + [f"Mixed_6{b}/{n}" for b in "bcde" for n in _SLIM_C]
    + [f"Mixed_7a/{n}" for n in ["Branch_0/Conv2d_0a_1x1", "Branch_0/Conv2d_1a_3x3", "Branch_1/Conv2d_0a_1x1",
                                 "Branch_1/Conv2d_0b_1x7", "Branch_1/Conv2d_0c_7x1", "Branch_1/Conv2d_1a_3x3"]]
    + [f"Mixed_7b/{n}" for n in _SLIM_E]
    + [f"Mixed_7c/{n}" for n in _SLIM_E[:3] + ["Branch_1/Conv2d_0c_3x1"] + _SLIM_E[4:]]
)


def test_tf_slim_variables_map_onto_the_model(inception_batch):
    from inceptionv3.checkpoints import tf_slim_to_state_dict

    # Mixed_5c's Branch_1 is named Conv2d_0b_1x1 in slim (not 0a): fix the table's generic entry.
    scopes = [s.replace("Mixed_5c/Branch_1/Conv2d_0a_1x1", "Mixed_5c/Branch_1/Conv2d_0b_1x1") for s in SLIM_SCOPES]
    source = calibrate(InceptionV3(aux_logits=True, count_include_pad=False), inception_batch, seed=7, affine=False)
    state = source.state_dict()
    blocks = [n for n, m in source.named_modules() if hasattr(m, "conv") and hasattr(m, "bn")]
    trunk = [b for b in blocks if not b.startswith("AuxLogits.")]
    assert len(trunk) == len(scopes) == 94
    variables = {}
    pairs = list(zip(trunk, scopes, strict=True))
    pairs += [("AuxLogits.conv0", "AuxLogits/Conv2d_1b_1x1"), ("AuxLogits.conv1", "AuxLogits/Conv2d_2a_5x5")]
    for prefix, scope in pairs:
        name = f"InceptionV3/{scope}"
        variables[f"{name}/weights"] = state[f"{prefix}.conv.weight"].permute(2, 3, 1, 0).numpy()
        for ours, theirs in (("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance")):
            variables[f"{name}/BatchNorm/{theirs}"] = state[f"{prefix}.bn.{ours}"].numpy()
    for prefix, scope in (("fc", "Logits/Conv2d_1c_1x1"), ("AuxLogits.fc", "AuxLogits/Conv2d_2b_1x1")):
        weight = torch.cat([torch.zeros(1, state[f"{prefix}.weight"].shape[1]), state[f"{prefix}.weight"]])
        variables[f"InceptionV3/{scope}/weights"] = weight.T[None, None].numpy()
        variables[f"InceptionV3/{scope}/biases"] = torch.cat([torch.zeros(1), state[f"{prefix}.bias"]]).numpy()
    variables["global_step"] = np.array(0)

    from inceptionv3.checkpoints import Checkpoint, build_model
    from inceptionv3.checkpoints.base import drop_background_class

    notes: list[str] = []
    converted = drop_background_class(tf_slim_to_state_dict(variables), notes)
    model = build_model(Checkpoint(converted, "tf-slim", count_include_pad=False), aux_logits=True)
    assert len(notes) == 2
    assert torch.equal(logits(model, inception_batch), logits(source, inception_batch))


# --- torchvision's Google file passed by hand (recognised, folded) ----------------------------------


def test_torchvision_google_file_is_recognised_by_sha256_and_folded(tmp_path, monkeypatch, caplog,
                                                                   torchvision_google_style, imagenet_batch):
    """Passed with --weights, torchvision's file must still get its transform_input folded (it used not to)."""
    path = tmp_path / "a_copy_under_any_name.pth"
    torch.save(torchvision_google_style.state_dict(), path)  # torchvision's layout: a plain state dict, aux included
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    known = checkpoints.KnownFile("inception_v3_google-0cc3c7bd.pth", digest, "the test's Google file")
    monkeypatch.setattr(checkpoints.layouts, "TRANSFORM_INPUT_FILES", (known,))
    reference = logits(torchvision_google_style, imagenet_batch)  # torchvision applies transform_input itself
    with caplog.at_level(logging.WARNING, logger="inceptionv3"):
        ours = get_model(path)
    assert max_abs_diff(logits(ours, imagenet_batch), reference) <= 3e-4
    assert any(str(path) in r.getMessage() and "folded" in r.getMessage() for r in caplog.records)
    assert any("recognised as the test's Google file" in note for note in ours.weights_info.notes)
    assert ours.weights_info.preprocess.source_note.endswith("; transform_input folded into the weights")
    # Asking for the fold as well must not fold twice.
    twice = get_model(path, transform_input=True)
    assert max_abs_diff(logits(twice, imagenet_batch), reference) <= 3e-4


def test_unrecognised_file_is_not_folded_and_its_notes_say_so(tmp_path, torchvision_google_style, imagenet_batch):
    """Same name, other bytes: nothing is folded, and nothing attached to the model claims that it was."""
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save(torchvision_google_style.state_dict(), path)
    model = get_model("inception_v3.tv_in1k", pretrained=path)
    note = model.weights_info.preprocess.source_note
    assert "transform_input not folded" in note and "with transform_input folded" not in note
    assert not any("folded" in n for n in model.weights_info.notes)
    assert "is folded into the first conv" not in get_entry("inception_v3.tv_in1k").notes
    plain = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
    plain.load_state_dict(torchvision_google_style.state_dict())
    assert max_abs_diff(logits(model, imagenet_batch), logits(plain, imagenet_batch)) <= 1e-4
    assert checkpoints.recognise_transform_input_file(path) is None


def test_prefix_only_known_file_needs_its_published_name(tmp_path, monkeypatch):
    """Where only the 8-hex prefix is published, the prefix alone (32 bits) is not enough to act on."""
    named = tmp_path / "inception_v3_google-test.pth"
    torch.save({"x": torch.arange(5.0)}, named)
    prefix = hashlib.sha256(named.read_bytes()).hexdigest()[:8]
    old = checkpoints.KnownFile(named.name, prefix, "old")
    monkeypatch.setattr(checkpoints.layouts, "TRANSFORM_INPUT_FILES", (old,))
    assert checkpoints.recognise_transform_input_file(named).description == "old"
    renamed = shutil.copy(named, tmp_path / "renamed.pth")
    assert checkpoints.recognise_transform_input_file(Path(renamed)) is None


def test_the_real_google_file_is_known_by_its_full_digest():
    known = {k.filename: k.sha256 for k in checkpoints.TRANSFORM_INPUT_FILES}
    digest = known["inception_v3_google-0cc3c7bd.pth"]
    assert len(digest) == 64 and digest.startswith("0cc3c7bd") and int(digest, 16)


# --- NaN / inf -------------------------------------------------------------------------------------


def test_non_finite_weights_warn_naming_the_file_the_count_and_the_tensors(tmp_path):
    state = InceptionV3(init_weights=False).state_dict()
    state["Mixed_6b.branch1x1.conv.weight"][0, 0, 0, 0] = float("nan")
    state["fc.bias"][:3] = float("inf")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.warns(RuntimeWarning, match="non-finite") as record:
        read_checkpoint(path)
    message = next(str(w.message) for w in record if "non-finite" in str(w.message))
    assert message.startswith(f"{path}: 4 non-finite values (NaN or inf) in 2 tensors")
    assert "Mixed_6b.branch1x1.conv.weight (1)" in message and "fc.bias (3)" in message


def test_finite_weights_do_not_warn(tmp_path):
    path = tmp_path / "fine.pth"
    torch.save(InceptionV3(init_weights=False).state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        read_checkpoint(path)


# --- crafted and malformed files: one line, fast, bounded memory -------------------------------------


@contextlib.contextmanager
def address_space_cap(extra: int = 1 << 30):
    """Allow at most ``extra`` more bytes of address space while a crafted file is read, so that a loader
    that believes it fails with a MemoryError instead of exhausting the machine (Linux; elsewhere a no-op)."""
    status = Path("/proc/self/status")
    if not status.is_file():
        yield
        return
    import resource

    vm_kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_kb * 1024 + extra
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused(path, match, **kwargs) -> str:
    """The CheckpointError that loading ``path`` gives: one line naming the file, within seconds and 1 GiB."""
    start = time.monotonic()
    with address_space_cap(), pytest.raises(CheckpointError, match=match) as info:
        get_model(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    assert time.monotonic() - start < 10
    return message


def test_deflated_torch_zip_bomb_is_refused_before_unpacking(tmp_path):
    """torch.save stores members uncompressed, but torch.load also inflates deflated ones: 64 MB here from
    64 KB (a 9 MB file would give 9 GB). The declared sizes are checked first."""
    plain, bomb = tmp_path / "plain.pth", tmp_path / "bomb.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(16 << 20)}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    assert bomb.stat().st_size < 200_000
    message = refused(bomb, "zip bomb")
    declared = sum(info.file_size for info in zipfile.ZipFile(bomb).infolist())
    assert declared > 64 << 20 and f"unpack to {declared:,} bytes from a {bomb.stat().st_size:,}-byte file" in message


def test_tensor_larger_than_any_inception_tensor_is_refused(tmp_path):
    """A stride-0 view of one stored value can declare a 10-million-class head in a few hundred bytes."""
    path = tmp_path / "huge_head.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3),
                "fc.weight": torch.zeros(1).expand(10_000_000, 2048)}, path)
    assert path.stat().st_size < 10_000
    refused(path, r"tensor 'fc.weight' declares shape \(10000000, 2048\)")


def test_broadcast_view_is_refused_even_when_its_shape_is_allowed(tmp_path):
    path = tmp_path / "view.pth"
    state = InceptionV3(init_weights=False).state_dict()
    state["fc.weight"] = torch.zeros(1).expand(50_000, 2048)
    state["fc.bias"] = torch.zeros(50_000)
    torch.save(state, path)
    refused(path, r"'fc.weight' \(50000, 2048\) is a broadcast view of 4 stored bytes")


def test_empty_head_cannot_declare_a_billion_classes(tmp_path):
    path = tmp_path / "empty_head.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3), "fc.weight": torch.zeros(10**9, 0)}, path)
    refused(path, r"fc.weight has shape \(1000000000, 0\); .* 1 to 100,000 classes")


def test_preset_crop_in_safetensors_metadata_is_bounded(tmp_path):
    """``preprocess: torchvision@20000`` would make every image allocate gigabytes in preprocessing."""
    from safetensors.torch import save_file

    state = InceptionV3(num_classes=10, init_weights=False).state_dict()
    metadata = {"format": "inceptionv3", "source": "torchvision", "count_include_pad": "true", "class_names": ""}
    path = tmp_path / "crop.safetensors"
    save_file(state, str(path), metadata={**metadata, "preprocess": "torchvision@20000"})
    refused(path, r"preprocess 'torchvision@20000': the crop must be a size from 75 to 2048")
    save_file(state, str(path), metadata={**metadata, "preprocess": "mmpretrain@75"})
    assert get_model(path).weights_info.preprocess.crop == 75
    # Metadata that is not one of its values is refused, not read as the default: a typo in the preset fell back to
    # torchvision's, and any count_include_pad but "true" meant false.
    save_file(state, str(path), metadata={**metadata, "preprocess": "mmpretrian"})
    refused(path, r"preprocess 'mmpretrian': no such preset \(known: keras, mmpretrain")
    save_file(state, str(path), metadata={**metadata, "preprocess": "mmpretrain", "count_include_pad": "maybe"})
    refused(path, r"count_include_pad metadata is 'maybe', not true or false")


def keras2_skeleton(path, *, replace=None, rename=None):
    """Keras 2's weights-file layout for Inception V3 (conv2d_1 ..., batch_normalization_1 ..., predictions)
    with every dataset declared but none written: HDF5 reads its fill value, and the file stays small.
    ``replace`` maps a dataset name to another shape, ``rename`` to another name."""
    with torch.device("meta"):
        model = InceptionV3(init_weights=False)
    blocks = [m for m in model.modules() if hasattr(m, "conv") and hasattr(m, "bn")]
    layers = {}
    for number, block in enumerate(blocks, start=1):
        out, inp, kh, kw = block.conv.weight.shape
        layers[f"conv2d_{number}"] = {"kernel": (kh, kw, inp, out)}
        layers[f"batch_normalization_{number}"] = {k: (out,) for k in ("beta", "moving_mean", "moving_variance")}
    layers["predictions"] = {"kernel": (2048, 1000), "bias": (1000,)}
    with h5py.File(path, "w") as handle:
        for name, weights in layers.items():
            group = handle.create_group(name)
            keys = {f"{name}/{role}:0": shape for role, shape in weights.items()}
            keys = {(rename or {}).get(key, key): (replace or {}).get(key, shape) for key, shape in keys.items()}
            group.attrs["weight_names"] = [key.encode() for key in keys]
            for key, shape in keys.items():
                group.create_dataset(key, shape=shape, dtype="f4", chunks=True, compression="gzip")
        handle.attrs["layer_names"] = [n.encode() for n in layers]
    return path


def test_keras_weights_stored_in_other_files_are_refused(tmp_path):
    """HDF5 external storage would read a dataset's bytes from any file on disk into the weights."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(3 * 3 * 3 * 32, dtype=np.float32).tobytes())
    path = keras2_skeleton(tmp_path / "external.h5")
    with h5py.File(path, "a") as handle:
        del handle["conv2d_1/conv2d_1/kernel:0"]
        handle["conv2d_1"].create_dataset("conv2d_1/kernel:0", shape=(3, 3, 3, 32), dtype="f4",
                                          external=[(str(secret), 0, 3456)])
    with pytest.raises(CheckpointError, match=r"external\.h5: .*'conv2d_1' 'kernel' keeps its data in other files"):
        read_checkpoint(path)


def test_keras_skeleton_reads(tmp_path):
    """The skeleton itself is a valid file: the refusals below are about what was changed in it."""
    checkpoint = read_checkpoint(keras2_skeleton(tmp_path / "ok.h5"))
    assert checkpoint.source == "keras" and checkpoint.num_classes == 1000


def test_h5_dataset_declaring_gigabytes_is_refused_before_it_is_read(tmp_path):
    """conv2d_1's kernel declared 3 x 3 x 3 x 2^31: 232 GB of fill value for a 300 KB file."""
    path = keras2_skeleton(tmp_path / "bomb.h5", replace={"conv2d_1/kernel:0": (3, 3, 3, 2**31)})
    assert path.stat().st_size < 2_000_000
    refused(path, r"not a Keras Inception V3 file: layer 'conv2d_1' 'kernel' has shape \(3, 3, 3, 2147483648\), "
                  r"Inception V3 needs \(3, 3, 3, 32\)")


@pytest.mark.parametrize(("renamed", "message"), [
    (("conv2d_1/kernel:0", "conv2d_1/weights:0"), "layer 'conv2d_1' has no 'kernel'"),
    (("batch_normalization_5/beta:0", "batch_normalization_5/offset:0"), "layer 'batch_normalization_5' has no 'beta'"),
])
def test_keras_file_missing_a_weight_names_the_layer(tmp_path, renamed, message):
    """These used to end as `error: kernel` / `error: beta` (a bare KeyError)."""
    path = keras2_skeleton(tmp_path / "partial.h5", rename=dict([renamed]))
    refused(path, f"not a Keras Inception V3 file: {message}")


def test_keras_without_h5py_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
    with pytest.raises(CheckpointError, match=r"needs h5py: pip install -e '\.\[keras\]' in the clone") as info:
        read_checkpoint(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize(("content", "what"), [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(300), "a JPEG image"),
    (random.Random(0).randbytes(4096), "unrecognised content"),
    (b"<!DOCTYPE html><html>Not Found</html>", "text or HTML"),
])
def test_non_checkpoints_say_so_rather_than_blaming_pickles(tmp_path, content, what):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    message = refused(path, "not a checkpoint")
    assert what in message and "pickle" not in message


def test_save_canonical_respects_the_umask(tmp_path):
    """The renamed file is readable as any new file would be (0666 less the umask), not mkstemp's 0600."""
    model = InceptionV3(num_classes=3, init_weights=False)
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        previous = os.umask(umask)
        try:
            path = save_canonical(model, tmp_path / f"m{umask:o}.safetensors", source="torchvision")
        finally:
            os.umask(previous)
        assert path.stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m22.safetensors", "m27.safetensors"]  # no temp files left


def test_a_legacy_file_cannot_declare_storages_larger_than_itself(tmp_path):
    """Pre-zip torch files declare each storage's element count in the pickle, and torch allocates that before
    reading any data: 8 kB could ask for 8 GB. Their data is in the file, so the declared total is held to its
    size, read from the pickle's opcodes without running them."""
    import struct

    honest = tmp_path / "legacy.pth"
    torch.save({"fc.bias": torch.zeros(1000), "other": torch.ones(5, dtype=torch.float64)}, honest,
               _use_new_zipfile_serialization=False)
    data = honest.read_bytes()
    count = data.index(b"M\xe8\x03", data.index(b"cpu"))  # BININT2 1000: the first storage's element count
    lying = tmp_path / "lying.pth"
    lying.write_bytes(data[:count] + b"J" + struct.pack("<i", 2**31 - 1) + data[count + 3:])
    refused(lying, r"its storages declare 8,589,93\d,\d+ bytes, more than the file's")
