"""Against TensorFlow itself (the `tf` extra and marker; `make test-tf`): a real TF-slim checkpoint, written by
`tf.compat.v1.train.Saver` from TF-slim's own `inception_v3` graph, loaded by this package."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import photo_paths
from PIL import Image

from inceptionv3 import get_model
from inceptionv3.preprocess import PRESETS

pytestmark = pytest.mark.tf


def _tf_slim():
    """tf_slim 1.1.0 imports `tf_keras.legacy_tf_layers`, which tf-keras 2.21 keeps under `tf_keras.src`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # the tf extra; the `tf` marker keeps these tests out of `make test` (make test-tf)

    legacy = importlib.import_module("tf_keras.src.legacy_tf_layers")
    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
    for module in pkgutil.iter_modules(legacy.__path__):
        sys.modules.setdefault(f"tf_keras.legacy_tf_layers.{module.name}",
                               importlib.import_module(f"tf_keras.src.legacy_tf_layers.{module.name}"))
    import tf_slim
    from tf_slim.nets import inception_v3

    return tf, tf_slim, inception_v3


@pytest.fixture(scope="module")
def slim_checkpoint(tmp_path_factory):
    """TF-slim's graph with random weights, BN moving statistics and offsets set to non-trivial values, saved as
    `model.ckpt-7` (TF's prefix naming); and TF's own logits on real photos prepared by the tf-slim preset."""
    tf, slim, nets = _tf_slim()
    folder = tmp_path_factory.mktemp("tf-slim")
    preset = PRESETS["tf-slim"]
    batch = preset.batch([str(p) for p in photo_paths()[:4]])  # N x 3 x 299 x 299
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        x = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3])
        with slim.arg_scope(nets.inception_v3_arg_scope()):
            logits, _ = nets.inception_v3(x, num_classes=1001, is_training=False)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            rng = np.random.default_rng(0)
            for variable in tf.compat.v1.global_variables():
                shape = variable.shape.as_list()
                if "moving_mean" in variable.name or "beta" in variable.name:
                    variable.load(rng.normal(0, 0.1, shape).astype(np.float32), session)
                elif "moving_variance" in variable.name:
                    variable.load(rng.uniform(0.5, 2.0, shape).astype(np.float32), session)
            prefix = saver.save(session, str(folder / "model.ckpt"), global_step=7)
            expected = session.run(logits, {x: batch.permute(0, 2, 3, 1).numpy()})
    return prefix, batch, expected


def test_the_loader_matches_tf_slim_given_the_prefix_or_the_index_file(slim_checkpoint):
    """Ours on the checkpoint against TF-slim's logits: within 1e-4 of the logit range, with the 1001st
    (background) output dropped so that class i is ImageNet class i."""
    prefix, batch, expected = slim_checkpoint
    assert prefix.endswith("model.ckpt-7") and not os.path.exists(prefix)  # the form TF users pass
    for name in (prefix, prefix + ".index"):
        model = get_model(name).eval()
        assert model.num_classes == 1000 and model.weights_info.preprocess.name == "tf-slim"
        with torch.no_grad():
            ours = model(batch).numpy()
        span = float(expected.max() - expected.min())
        assert span > 1.0  # a real range, not a saturated network
        print(f"max abs {np.abs(ours - expected[:, 1:]).max():.3g} on a logit range of {span:.3g}")
        assert np.abs(ours - expected[:, 1:]).max() <= 1e-4 * span


def test_a_tensorflow_checkpoint_is_refused_on_its_declared_shapes_before_any_read(slim_checkpoint, monkeypatch):
    """The index declares every variable's shape; a declared size past the bound stops the load before a byte of
    the data file is read (here the bound is lowered so that a real checkpoint crosses it)."""
    from inceptionv3 import CheckpointError, checkpoints

    prefix, _, _ = slim_checkpoint
    monkeypatch.setattr(checkpoints.base, "MAX_TENSOR_NUMEL", 1000)
    read = []
    import tensorflow as tf

    real = tf.train.load_checkpoint

    def spy(name):
        reader = real(name)
        get_tensor = reader.get_tensor
        return type("Spy", (), {"get_variable_to_shape_map": reader.get_variable_to_shape_map,
                                "get_tensor": lambda _, key: read.append(key) or get_tensor(key)})()

    monkeypatch.setattr(tf.train, "load_checkpoint", spy)
    with pytest.raises(CheckpointError, match=r"model\.ckpt-7: tensor '.*' declares shape .* more than any"):
        get_model(prefix)
    assert read == []


def _slim_eval(tf, rgb) -> np.ndarray:
    """slim's `preprocess_for_eval` run by TensorFlow on a uint8 H x W x 3 tensor: H x W x 3 in [-1, 1]."""
    image = tf.image.convert_image_dtype(rgb, tf.float32)
    image = tf.image.central_crop(image, central_fraction=0.875)
    image = tf.compat.v1.image.resize_bilinear(image[None], [299, 299], align_corners=False)[0]
    return ((image - 0.5) * 2.0).numpy()


def test_tf_slim_preset_matches_slims_eval_preprocessing_computed_by_tensorflow():
    """slim's `preprocess_for_eval` done by TensorFlow on 5 real photos: convert_image_dtype to [0, 1],
    central_crop(0.875), TF1 resize_bilinear to 299 (align_corners=False), (x - 0.5) * 2. The preset resizes
    the same way but keeps the 299 crop as uint8, as every preset does: at most half a grey level apart."""
    tf, _, _ = _tf_slim()
    preset = PRESETS["tf-slim"]
    worst = []
    for path in photo_paths()[:5]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        expected = _slim_eval(tf, tf.constant(rgb))
        ours = preset.normalize(preset.crop_image(rgb)[None])[0].permute(1, 2, 0).numpy()
        worst.append(float(np.abs(ours - expected).max()))
    print(f"tf-slim preset vs TensorFlow: max abs {max(worst):.4g} in [-1, 1] units")
    assert max(worst) <= 1 / 255 + 1e-6  # half a grey level, on the [-1, 1] scale


def test_the_tf_slim_preset_from_the_file_matches_tensorflows_whole_pipeline():
    """From the JPEG file: TensorFlow's decode_jpeg (its default, libjpeg's fast IDCT), then slim's eval
    preprocessing, against the preset given the same file. With the accurate IDCT that every other decoder uses,
    the preset was up to 0.15 apart on the [-1, 1] scale; decoded as TensorFlow decodes, within 2 grey levels."""
    tf, _, _ = _tf_slim()
    preset = PRESETS["tf-slim"]
    worst = []
    for path in [p for p in photo_paths() if p.suffix == ".jpg"][:6]:
        expected = _slim_eval(tf, tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3))
        ours = preset.normalize(preset.load(path)[None])[0].permute(1, 2, 0).numpy()
        worst.append(float(np.abs(ours - expected).max()))
    print(f"tf-slim preset from the file vs TensorFlow's pipeline: max abs {max(worst):.4g} in [-1, 1] units")
    assert max(worst) <= 2 * 2 / 255 + 1e-6  # two grey levels, on the [-1, 1] scale


KERAS_WRITER = '''
import os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np

out = sys.argv[1]
batch = np.load(os.path.join(out, "batch.npy"))  # N x H x W x 3


def moving_statistics(model, rng):
    """Non-trivial BN offsets and moving statistics (a fresh model has mean 0, variance 1)."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            shape = layer.get_weights()[0].shape  # beta, moving_mean, moving_variance (scale=False)
            layer.set_weights([rng.normal(0, 0.2, shape).astype("float32"), rng.normal(0, 0.1, shape).astype("float32"),
                               rng.uniform(0.5, 2.0, shape).astype("float32")])


import keras

assert keras.backend.backend() == "tensorflow", keras.backend.backend()
keras.utils.set_random_seed(0)
model = keras.applications.InceptionV3(weights=None, classifier_activation=None)
moving_statistics(model, np.random.default_rng(0))
model.save(os.path.join(out, "keras3-full.h5"))
model.save_weights(os.path.join(out, "keras3.weights.h5"))
model.save(os.path.join(out, "keras3.keras"))
np.save(os.path.join(out, "keras3-logits.npy"), model.predict(batch, verbose=0))

import tf_keras  # Keras 2.x, as tf.keras was up to TensorFlow 2.15

tf_keras.utils.set_random_seed(1)
model = tf_keras.applications.InceptionV3(weights=None, classifier_activation=None)
moving_statistics(model, np.random.default_rng(1))
model.save_weights(os.path.join(out, "tf-keras-weights.h5"))
model.save(os.path.join(out, "tf-keras-full.h5"))
model.save_weights(os.path.join(out, "tf-keras-checkpoint", "weights"))  # TensorFlow's checkpoint format
np.save(os.path.join(out, "tf-keras-logits.npy"), model.predict(batch, verbose=0))
'''


@pytest.fixture(scope="module")
def keras_tf_files(tmp_path_factory):
    """Keras 3 on its TensorFlow backend and tf-keras 2.x write their files and predict, in a process of their own
    (KERAS_BACKEND is read once per process, and the other tests run Keras on torch)."""
    folder = tmp_path_factory.mktemp("keras-tf")
    batch = PRESETS["keras"].batch([str(p) for p in photo_paths()[:4]])
    np.save(folder / "batch.npy", batch.permute(0, 2, 3, 1).numpy())
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", KERAS_WRITER, str(folder)], env=env, capture_output=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return folder, batch


@pytest.mark.parametrize("name, writer", [
    ("keras3-full.h5", "keras3"), ("keras3.weights.h5", "keras3"), ("keras3.keras", "keras3"),
    ("tf-keras-weights.h5", "tf-keras"), ("tf-keras-full.h5", "tf-keras"),
    ("tf-keras-checkpoint/weights", "tf-keras"), ("tf-keras-checkpoint/weights.index", "tf-keras"),
])
def test_keras_files_written_by_tensorflow_load_and_match_keras_predict(keras_tf_files, name, writer):
    folder, batch = keras_tf_files
    expected = np.load(folder / f"{writer}-logits.npy")
    model = get_model(str(folder / name)).eval()
    info = model.weights_info
    assert info.source == "keras" and info.preprocess.name == "keras" and model.count_include_pad is False
    with torch.no_grad():
        ours = model(batch).numpy()
    span = float(expected.max() - expected.min())
    assert span > 1.0
    print(f"{name}: max abs {np.abs(ours - expected).max():.3g} on a logit range of {span:.3g}")
    assert np.abs(ours - expected).max() <= 1e-4


def test_keras_preset_matches_preprocess_input_after_tensorflows_resize():
    """The `keras` preset on 5 real photos against TensorFlow: central_crop(0.875), then `tf.image.resize`
    (bilinear, half-pixel centres, no antialias: what `keras.layers.Resizing` and
    `keras.utils.image_dataset_from_directory` do), then `keras.applications.inception_v3.preprocess_input`.
    The normalisation alone is bit-identical; the whole is within one grey level: the crop is kept as uint8 (half a
    level) and cv2 blends uint8 pixels with 11-bit fixed-point weights (measured: 0.77 of a level at most, 0.2 on
    average)."""
    tf, _, _ = _tf_slim()
    from tf_keras.applications.inception_v3 import preprocess_input

    preset = PRESETS["keras"]
    worst, mean = [], []
    for path in photo_paths()[:5]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        crop = preset.crop_image(rgb)
        ours = preset.normalize(crop[None])[0].permute(1, 2, 0).numpy()
        assert np.array_equal(ours, preprocess_input(crop.astype(np.float32)))  # the same float operations
        image = tf.image.central_crop(tf.constant(rgb, tf.float32), central_fraction=0.875)
        image = tf.image.resize(image, [299, 299], method="bilinear", antialias=False)
        expected = preprocess_input(image.numpy())
        worst.append(float(np.abs(ours - expected).max()))
        mean.append(float(np.abs(ours - expected).mean()))
    level = 1 / 127.5  # one grey level on the [-1, 1] scale
    print(f"keras preset vs TensorFlow: max abs {max(worst) / level:.3f}, mean {max(mean) / level:.3f} grey levels")
    assert max(worst) <= level and max(mean) <= 0.35 * level


def _save_variables(prefix: str, variables: dict) -> str:
    tf, _, _ = _tf_slim()
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(variables), shape_and_slices=[""] * len(variables),
                      tensors=[tf.constant(v) for v in variables.values()])
    return prefix


def _damaged_copy(prefix: str, folder, damage: str) -> str:
    import shutil

    for part in (".index", ".data-00000-of-00001"):
        shutil.copy(prefix + part, folder / f"model{part}")
    data = folder / "model.data-00000-of-00001"
    if damage == "truncated":
        os.truncate(data, data.stat().st_size // 2)
    elif damage == "missing":
        data.unlink()
    elif damage == "flipped":
        with open(data, "r+b") as handle:
            handle.seek(data.stat().st_size // 2)
            handle.write(b"\xff" * 64)
    return str(folder / "model")


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "Read less bytes than requested"), ("missing", "No such file"), ("flipped", "[Cc]hecksum"),
])
def test_a_damaged_tensorflow_checkpoint_is_one_clear_error_naming_it(slim_checkpoint, tmp_path, damage, reason):
    from inceptionv3 import CheckpointError

    prefix = _damaged_copy(slim_checkpoint[0], tmp_path, damage)
    with pytest.raises(CheckpointError, match=f"^{re.escape(prefix)}: not a readable .*{reason}"):
        get_model(prefix)


def test_checkpoints_that_are_not_inception_v3_name_the_file_and_the_problem(tmp_path):
    from inceptionv3 import CheckpointError

    key = "layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    cases = {
        "garbled-graph": ({"_CHECKPOINTABLE_OBJECT_GRAPH": np.array(b"\x0a\xff\xff\xff\xff\x0f", dtype=object),
                           key: np.zeros((3, 4), np.float32)}, "DecodeError"),
        "float-graph": ({"_CHECKPOINTABLE_OBJECT_GRAPH": np.zeros(4, np.float32), key: np.zeros((3, 4), np.float32)},
                        "TypeError"),
        "no-batch-norm": ({f"InceptionV3/Conv{i:03d}/weights": np.zeros((1, 1, 1, 1), np.float32) for i in range(94)},
                          "KeyError: 'InceptionV3/Conv000/BatchNorm/beta'"),
        "one-conv": ({"InceptionV3/Conv2d_1a_3x3/weights": np.zeros((3, 3, 3, 32), np.float32)},
                     "found 1 TF-slim conv layers, Inception V3 has 94"),
    }
    for name, (variables, reason) in cases.items():
        prefix = _save_variables(str(tmp_path / name / "model"), variables)
        with pytest.raises(CheckpointError, match=f"^{re.escape(prefix)}: .*{re.escape(reason)}"):
            get_model(prefix)


def test_a_fifo_data_shard_beside_a_real_index_is_refused_without_blocking(slim_checkpoint, tmp_path):
    """In a process of its own, which the test can kill: TensorFlow would block opening the FIFO."""
    import shutil

    shutil.copy(slim_checkpoint[0] + ".index", tmp_path / "model.index")
    os.mkfifo(tmp_path / "model.data-00000-of-00001")
    code = ("import sys\nfrom inceptionv3 import CheckpointError, get_model\ntry:\n    get_model(sys.argv[1])\n"
            "except CheckpointError as exc:\n    print(exc)")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        pytest.fail("loading a checkpoint whose data file is a FIFO blocked")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model.data-00000-of-00001: is a FIFO, not a regular file" in done.stdout
