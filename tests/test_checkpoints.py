"""Parity with the reference libraries on identical, realistic weights, and the loading rules."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import calibrate, max_abs_diff

from inceptionv3 import CheckpointError, InceptionV3, get_model, read_checkpoint, save_canonical
from inceptionv3.checkpoints import fold_transform_input


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


@pytest.mark.parametrize("tag", TIMM_TAGS)
def test_timm_parity(tmp_path, tag, torchvision_plain, imagenet_batch):
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


@pytest.mark.parametrize("layout", ["full_model.h5", "model.weights.h5", "keras2_weights_tf_kernels.h5"])
def test_keras_parity(tmp_path, layout, keras_reference, inception_batch):
    path = tmp_path / layout
    if layout == "full_model.h5":
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
    with pytest.raises(KeyError, match="neither a zoo model"):
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
        with pytest.raises(Exception):  # noqa: B017 - TensorFlow's own error for a corrupt index
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

    from inceptionv3.checkpoints import Checkpoint, _drop_background_class, build_model

    notes: list[str] = []
    converted = _drop_background_class(tf_slim_to_state_dict(variables), notes)
    model = build_model(Checkpoint(converted, "tf-slim", count_include_pad=False), aux_logits=True)
    assert len(notes) == 2
    assert torch.equal(logits(model, inception_batch), logits(source, inception_batch))
