"""Whether a heatmap can be trusted: scores that test a map against the model it explains, each beside the same
score for a random map, and the model-randomisation sanity check.

- **Deletion and insertion** (Petsiuk et al. 2018, RISE): the crop's pixels, most relevant first by the map, are
  replaced by a baseline (deletion) or put back onto it (insertion) in ``steps`` equal steps; the target's softmax
  probability is read at every step and its curve integrated (trapezoid over [0, 1]). A faithful map makes
  deletion fall fast (low AUC) and insertion rise fast (high AUC). Baselines: ``blur`` (Gaussian, 11 x 11,
  sigma 5: RISE's kernel), ``mean`` (the crop's mean colour) or ``zeros`` (black).
- **ROAD** (Rong et al. 2022), as grad-cam 1.5.7 computes it: at each percentile p of 10, 20 ... 90, the pixels at
  or above the map's p-th percentile (most relevant first, MoRF) or at or below its (100 - p)-th (least relevant
  first, LeRF) are replaced by noisy linear imputation from their neighbours (weights 1/6 beside, 1/12 diagonal;
  noise 0.01 in normalised units), and the target's probability change is averaged. ``road`` is
  (LeRF - MoRF) / 2: high when removing the map's pixels hurts and removing the rest does not.
- **A random map** scored the same way on the same image (a seeded uniform map per image), so that each number
  has something to beat: ``beats_random`` says whether it did.
- **Sanity** (Adebayo et al. 2018): the model's blocks are re-initialised from the top down, one more at each step,
  and the map recomputed; its Spearman rank correlation with the original map should fall, since a map that
  survives random weights does not explain them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import nn

from .errors import InputError

SCORES = ("deletion", "insertion", "road")
BASELINES = ("blur", "mean", "zeros")
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01
#: (row offset, column offset), weight: grad-cam's NoisyLinearImputer, in its order (the right-hand side is summed
#: in this order, so the same order gives the same bits).
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))
LOWER_IS_BETTER = frozenset({"deletion", "morf"})  # a drop of the probability, the deeper the better

ScoreFn = Callable[[torch.Tensor], np.ndarray]
"""A normalised N x 3 x H x W batch -> the target's softmax probability for each image."""


@dataclass
class Faithfulness:
    """One map's scores, the same scores for a random map, and how they were computed."""

    scores: dict[str, float]
    random: dict[str, float]
    settings: dict[str, object] = field(default_factory=dict)

    def beats_random(self, score: str) -> bool:
        ours, chance = self.scores[score], self.random[score]
        return ours < chance if score in LOWER_IS_BETTER else ours > chance

    def row(self) -> dict[str, object]:
        """Flat columns for the CSV and JSONL files: each score, its random value, and whether it won."""
        out: dict[str, object] = {}
        for score in self.scores:
            out[score] = self.scores[score]
            out[f"{score}_random"] = self.random[score]
            out[f"{score}_beats_random"] = self.beats_random(score)
        return out


def check_request(scores: Sequence[str], steps: int = 50) -> None:
    """The scores asked for, the steps, and scipy for ROAD: refused before any image is explained."""
    if not scores or any(s not in SCORES for s in scores):
        raise InputError(f"--score takes {', '.join(SCORES)}, comma-separated; got {', '.join(scores) or 'none'}")
    if ("deletion" in scores or "insertion" in scores) and steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if "road" in scores:
        _require_scipy()


def _require_scipy() -> None:
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise InputError("the road score needs scipy: pip install -e '.[explain]' in the clone")


def target_probability(model: nn.Module, target: int, batch_size: int = 16) -> ScoreFn:
    """The scorer the scores use: eval mode, no autograd, ``batch_size`` images at a time."""
    def score(batch: torch.Tensor) -> np.ndarray:
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.inference_mode():
                for start in range(0, len(batch), batch_size):
                    logits = model(batch[start:start + batch_size]).float()
                    out.append(torch.softmax(logits, dim=1)[:, target].cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(out)
    return score


def baseline_image(crop: np.ndarray, kind: str) -> np.ndarray:
    """What deleted pixels become (and insertion starts from), H x W x 3 float32 in 0-255."""
    image = crop.astype(np.float32)
    if kind == "zeros":
        return np.zeros_like(image)
    if kind == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1)), image.shape).copy()
    if kind == "blur":
        return cv2.GaussianBlur(image, (11, 11), 5)
    raise InputError(f"--baseline must be one of {', '.join(BASELINES)}, got {kind!r}")


def perturbation_curves(score: ScoreFn, normalize: Callable[[np.ndarray], torch.Tensor], crop: np.ndarray,
                        heatmap: np.ndarray, baseline: str = "blur", steps: int = 50,
                        chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (``steps + 1`` probabilities each, from nothing changed to everything). Pixels
    go in the map's order, most relevant first; ties keep raster order. ``chunk`` images are built at a time."""
    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if heatmap.shape != crop.shape[:2]:
        raise InputError(f"the heatmap is {heatmap.shape}, the crop {crop.shape[:2]}")
    image, base = crop.astype(np.float32), baseline_image(crop, baseline)
    order = np.argsort(-heatmap.ravel(), kind="stable")
    counts = np.round(np.linspace(0, order.size, steps + 1)).astype(np.int64)
    curves = []
    for start_from, fill in ((image, base), (base, image)):  # deletion, then insertion
        probabilities = []
        for first in range(0, len(counts), chunk):
            batch = np.repeat(start_from[None], len(counts[first:first + chunk]), axis=0).reshape(-1, order.size, 3)
            for row, count in enumerate(counts[first:first + chunk]):
                chosen = order[:count]
                batch[row, chosen] = fill.reshape(-1, 3)[chosen]
            probabilities.append(score(normalize(batch.reshape(-1, *crop.shape))))
        curves.append(np.concatenate(probabilities))
    return curves[0], curves[1]


def area(curve: np.ndarray) -> float:
    """The trapezoid area under a curve sampled at equal steps over [0, 1]."""
    return float((curve[:-1] + curve[1:]).sum() / (2 * (len(curve) - 1)))


def impute(image: torch.Tensor, keep: np.ndarray, noise: float = ROAD_NOISE,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation of a C x H x W image: every pixel where ``keep`` is 0 becomes the weighted
    mean of its in-bounds neighbours (known ones by value, missing ones as unknowns of one sparse system), plus
    Gaussian noise of ``noise``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    height, width = keep.shape
    flat_keep = keep.reshape(-1)
    pixels = image.reshape(image.shape[0], -1).numpy()
    missing = np.flatnonzero(flat_keep == 0)
    if missing.size == 0:
        return image.clone()
    if missing.size == flat_keep.size:  # nothing to impute from (a map with this many ties): the mean, 0, plus noise
        return noise * torch.randn(image.shape, generator=generator)
    unknown = np.zeros(flat_keep.size, dtype=np.int64)
    unknown[missing] = np.arange(missing.size)
    rows, cols, values = [], [], []
    rhs = np.zeros((missing.size, image.shape[0]))
    total = np.ones(missing.size)
    y, x = missing // width, missing % width
    for (dy, dx), weight in NEIGHBOURS:
        inside = (y + dy >= 0) & (y + dy < height) & (x + dx >= 0) & (x + dx < width)
        where = np.flatnonzero(inside)
        neighbour = missing[where] + dy * width + dx
        known = flat_keep[neighbour] > 0.5
        rhs[where[known]] -= weight * pixels[:, neighbour[known]].T
        rows.append(where[~known])
        cols.append(unknown[neighbour[~known]])
        values.append(np.full(int((~known).sum()), weight))
        total[~inside] -= weight
    rows.append(np.arange(missing.size))
    cols.append(np.arange(missing.size))
    values.append(-total)
    system = coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(missing.size, missing.size)).tocsc()
    solved = torch.tensor(spsolve(system, rhs), dtype=torch.float).reshape(missing.size, -1)
    out = image.reshape(image.shape[0], -1).clone()
    out[:, missing] = solved.t() + noise * torch.randn(solved.t().shape, generator=generator)
    return out.reshape_as(image)


def road(score: ScoreFn, image: torch.Tensor, heatmap: np.ndarray,
         percentiles: Sequence[int] = ROAD_PERCENTILES, noise: float = ROAD_NOISE,
         generator: torch.Generator | None = None) -> dict[str, float]:
    """ROAD for one normalised 3 x H x W image: the mean probability change with the most relevant pixels imputed
    (``morf``), with the least relevant imputed (``lerf``), and ``road`` = (lerf - morf) / 2. LeRF runs first, as
    in grad-cam's ROADCombined, so a generator seeded as grad-cam's global one draws the same noise."""
    _require_scipy()
    before = score(image[None])[0]
    changes = {}
    for name, ranked in (("lerf", 1 - heatmap), ("morf", heatmap)):
        perturbed = [impute(image, np.float32(ranked < np.percentile(ranked, p)), noise, generator)
                     for p in percentiles]
        changes[name] = float(np.mean(np.float32(score(torch.stack(perturbed)) - before)))
    return {"morf": changes["morf"], "lerf": changes["lerf"], "road": (changes["lerf"] - changes["morf"]) / 2}


def random_map(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def faithfulness(model: nn.Module, normalize: Callable[[np.ndarray], torch.Tensor], crop: np.ndarray,
                 heatmap: np.ndarray, target: int, scores: Sequence[str] = SCORES, *, baseline: str = "blur",
                 steps: int = 50, seed: int = 0, device: torch.device | str = "cpu") -> Faithfulness:
    """The chosen ``scores`` of one map over its H x W x 3 uint8 crop, and of a random map (seeded by ``seed``)."""
    check_request(scores, steps)
    score = target_probability(model, target)
    device_score: ScoreFn = lambda batch: score(batch.to(device))  # noqa: E731
    settings: dict[str, object] = {"target": int(target), "random_seed": seed}
    results: list[dict[str, float]] = []
    for which, ranking in (("map", heatmap), ("random", random_map(heatmap.shape, seed))):
        out: dict[str, float] = {}
        if "deletion" in scores or "insertion" in scores:
            deletion, insertion = perturbation_curves(device_score, normalize, crop, ranking, baseline, steps)
            out.update({"deletion": area(deletion), "insertion": area(insertion)})
            settings.update({"baseline": baseline, "steps": steps})
        if "road" in scores:
            generator = torch.Generator().manual_seed(seed + (which == "random"))
            out.update(road(device_score, normalize(crop[None])[0], ranking, generator=generator))
            settings.update({"road_percentiles": list(ROAD_PERCENTILES), "road_noise": ROAD_NOISE})
        results.append({k: v for k, v in out.items() if k in scores or k in ("morf", "lerf")})
    return Faithfulness(results[0], results[1], settings)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two maps' values (ties ranked by their mean rank), 0 where either map is constant."""
    def ranks(values: np.ndarray) -> np.ndarray:
        flat = values.ravel().astype(np.float64)
        order = np.argsort(flat, kind="stable")
        sorted_values = flat[order]
        first = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
        group = np.cumsum(first) - 1
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], flat.size]
        mean_rank = (starts + ends - 1) / 2
        out = np.empty_like(flat)
        out[order] = mean_rank[group]
        return out

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def sanity_steps(model: nn.Module) -> list[str]:
    """The blocks re-initialised in turn, from the top: the classifier, then the feature stages backwards."""
    stages = model.feature_stages() if hasattr(model, "feature_stages") else []
    return ["fc", *[s for s in reversed(stages) if any(True for _ in getattr(model, s).parameters())]]


def sanity(model: nn.Module, explain: Callable[[nn.Module], np.ndarray], steps: int | None = None,
           seed: int = 0) -> list[tuple[str, float]]:
    """Cascading model randomisation: ``explain(model)`` gives a map; the blocks of :func:`sanity_steps` are
    re-initialised one more at a time (seeded) on a copy, and each map is compared with the original by rank
    correlation. The model itself is not changed."""
    original = explain(model)
    randomised = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out = []
    try:
        for name in sanity_steps(model)[:steps]:
            for module in randomised.get_submodule(name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                if isinstance(module, nn.BatchNorm2d):  # random statistics too, or BN would undo the weights' scale
                    module.running_mean.normal_(0, 1)
                    module.running_var.uniform_(0.5, 2)
            out.append((name, rank_correlation(original, explain(randomised))))
    finally:
        torch.random.set_rng_state(generator_state)
    return out


__all__ = ["BASELINES", "ROAD_PERCENTILES", "SCORES", "Faithfulness", "area", "baseline_image", "check_request",
           "faithfulness",
           "impute", "perturbation_curves", "random_map", "rank_correlation", "road", "sanity", "sanity_steps",
           "target_probability"]
