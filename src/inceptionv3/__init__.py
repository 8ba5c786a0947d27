"""Inception V3 in plain PyTorch: exact ports of every public checkpoint, with their preprocessing."""

from .checkpoints import CheckpointError, fold_transform_input, read_checkpoint, save_canonical
from .decode import ImageLoadError, load_image
from .errors import DatasetError, DownloadError, ExportError, InceptionV3Error, InputError
from .features import Features, FIDMetric, extract_features
from .fid_math import (
    FIDStatistics,
    FrechetDistance,
    density_coverage,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from .inference import Classifier, Prediction, PredictionError, inference_model
from .model import InceptionOutputs, InceptionV3, count_flops, count_parameters
from .preprocess import PRESETS, Preprocess
from .version import __version__ as __version__
from .weights import (
    ZOO,
    WeightsEntry,
    download_weights,
    get_entry,
    get_model,
    imagenet_classes,
    list_models,
)

__all__ = [
    "InceptionV3", "InceptionOutputs", "count_flops", "count_parameters",
    "get_model", "list_models", "get_entry", "download_weights", "imagenet_classes", "ZOO", "WeightsEntry",
    "read_checkpoint", "save_canonical", "fold_transform_input", "CheckpointError",
    "inference_model", "Classifier", "Prediction", "PredictionError", "ImageLoadError", "load_image",
    "Preprocess", "PRESETS",
    "InceptionV3Error", "InputError", "DatasetError", "DownloadError", "ExportError",
    "extract_features", "Features", "FIDStatistics", "FrechetDistance", "frechet_distance", "kernel_inception_distance",
    "inception_score", "precision_recall", "density_coverage", "FIDMetric",
]
