"""The arithmetic of FID, KID and IS, in float64, and the statistics files FID is usually computed from.

Statistics stream: each batch is folded into (n, mean, M2) with Chan et al.'s pairwise update, which is exact
(no large sums that cancel) and takes O(d^2) memory whatever the image count. Processes combine theirs the same
way, through two all-reduces (counts and weighted means, then within- plus between-process scatter).

The Fréchet distance needs tr sqrt(S1 S2). S1 S2 is not symmetric, which is why pytorch-fid needs scipy's
general ``sqrtm`` and then has to discard an imaginary part. Its eigenvalues are those of the symmetric
A^T S2 A for a factor S1 = A A^T, so two symmetric eigendecompositions give the trace in real arithmetic (with an
SVD instead of the second when the sides are rank-deficient; see :func:`trace_sqrt_product`).
``method='sqrtm'`` keeps pytorch-fid's path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .files import FileReadError, atomic_path, open_regular
from .runtime import all_reduce_sum

STATS_FORMAT = "inceptionv3-fid-stats/1"

#: Largest feature size a statistics file may declare (sigma is d x d float64: 128 MB at 4096).
MAX_STATS_DIMS = 4096


def npz_keys(path: str | os.PathLike) -> set[str]:
    """The array names in an .npz, from its zip directory alone (nothing is decompressed)."""
    with open_npz(path) as archive:
        return {info.filename.removesuffix(".npy") for info in archive.infolist()}


def read_npz(path: str | os.PathLike, max_bytes: dict[str, int]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz (those present), each read from its own zip member only and bounded before
    anything is allocated: a declared size over its ``max_bytes`` entry, an object (pickled) dtype, or a member
    shorter than its header declares is refused with the file and key named. Other members are never read, so
    a statistics file that also carries gigabytes of images costs nothing more."""
    out = {}
    with open_npz(path) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        for key, limit in max_bytes.items():
            if key in members:
                try:
                    out[key] = _read_member(archive, members[key], limit)
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                    raise InputError(f"{path}: array {key!r}: {exc}") from None
    return out


@contextlib.contextmanager
def open_npz(path: str | os.PathLike) -> Iterator[zipfile.ZipFile]:
    """The zip behind an .npz; FIFOs and devices are refused before they are opened (``open_regular``)."""
    try:
        handle = open_regular(path, 1 << 40, "an .npz file")
    except FileReadError as exc:
        raise InputError(f"{path}: {exc.reason}") from None
    with handle:
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable .npz file ({exc})") from None
        with archive:
            yield archive


def check_covariance(sigma: np.ndarray, what: str) -> None:
    """A covariance is symmetric and positive semi-definite, up to float rounding; a file whose sigma is not gave
    a negative FID without a word. Symmetry is checked to 1e-6 of its largest entry; an eigenvalue may be below
    zero by 1e-6 of that entry (float rounding of a singular covariance): a Cholesky factorisation of sigma plus
    that much of the identity exists exactly then (50 ms at d = 2048, where an eigendecomposition takes 1 s)."""
    scale = float(np.abs(sigma).max(initial=0.0))
    if scale == 0.0:
        return
    if float(np.abs(sigma - sigma.T).max()) > 1e-6 * scale:
        raise InputError(f"{what} is not symmetric, so it is not a covariance")
    try:
        np.linalg.cholesky(sigma + 1e-6 * scale * np.eye(len(sigma)))
    except np.linalg.LinAlgError:
        raise InputError(f"{what} has a negative eigenvalue, so it is not a covariance (positive "
                         "semi-definite)") from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> np.ndarray:
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(member)
        if dtype.hasobject:
            raise ValueError("holds Python objects (a pickle), which are never loaded")
        size = math.prod(shape) * dtype.itemsize
        if size > limit:
            raise ValueError(f"declares {shape} {dtype} ({size:,} bytes), over the {limit:,} this array may have")
        data = member.read(size)
    if len(data) != size:
        raise ValueError(f"truncated: {len(data):,} of the {size:,} bytes its header declares")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _write_image_member(archive: zipfile.ZipFile, shape: tuple[int, ...], batches: Iterable[np.ndarray]) -> None:
    """``arr_0.npy``: an .npy header for ``shape`` uint8, then the batches' bytes as they come (stored, not
    deflated: images barely compress, and a stored member can be read by seeking)."""
    info = zipfile.ZipInfo("arr_0.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    written = 0
    with archive.open(info, "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                      "shape": tuple(int(v) for v in shape)})
        for batch in batches:
            batch = np.ascontiguousarray(batch, dtype=np.uint8)
            if batch.shape[1:] != tuple(shape[1:]):
                raise InputError(f"arr_0 holds {shape[1]}x{shape[2]} images; one is {batch.shape[1]}x{batch.shape[2]} "
                                 "(an ADM batch has one size: resize the images first)")
            member.write(batch.tobytes())
            written += len(batch)
    if written != shape[0]:
        raise InputError(f"arr_0 declares {shape[0]} images, {written} were given")


class RankDeficientWarning(UserWarning):
    """N <= d: the covariance estimate is singular, and FID is biased upwards (use more images)."""


class ProvenanceWarning(UserWarning):
    """Statistics without metadata: which network and preprocessing made them is unknown."""


@dataclass
class FIDStatistics:
    """Streaming mean and covariance of feature vectors, in float64.

    ``m2`` is the sum of outer products of deviations from the mean, so ``sigma = m2 / (n - 1)``.
    """

    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    stored_sigma: np.ndarray | None = field(default=None, repr=False)
    """The covariance exactly as a file held it (re-scaling m2 by n - 1 would round it; some files lack n)."""

    @property
    def dims(self) -> int | None:
        return None if self.mean is None else int(self.mean.shape[0])

    @property
    def mu(self) -> np.ndarray:
        self._need_data()
        return self.mean

    @property
    def sigma(self) -> np.ndarray:
        """The unbiased covariance (``np.cov``'s)."""
        if self.n < 2:
            raise InputError(f"a covariance needs at least 2 samples, these statistics hold {self.n}")
        return self.m2 / (self.n - 1)

    def _need_data(self) -> None:
        if self.mean is None:
            raise InputError("empty statistics: no features were added")

    def update(self, features: np.ndarray | torch.Tensor) -> FIDStatistics:
        """Fold an N x d batch in."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().double().numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise InputError(f"features must be N x d, got shape {x.shape}")
        if x.shape[0] == 0:
            return self
        mean = x.mean(axis=0)
        centred = x - mean
        return self.merge(FIDStatistics(x.shape[0], mean, centred.T @ centred))

    def merge(self, other: FIDStatistics) -> FIDStatistics:
        """Chan's pairwise combination, in place: the statistics of both sample sets together."""
        for side in (self, other):
            if side.stored_sigma is not None and side.n < 2:
                raise InputError("cannot merge statistics whose sample count is unknown (a file without 'n')")
        self.stored_sigma = None
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.copy(), other.m2.copy()
            return self
        if other.dims != self.dims:
            raise InputError(f"cannot merge statistics of {self.dims}-d and {other.dims}-d features")
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        self.n = n
        return self

    def all_reduce(self, group: Any = None) -> FIDStatistics:
        """Combine with every other process of ``torch.distributed`` (all ranks end with the same statistics).

        Exact in the sense of Chan's formula: first the global count and mean, then each rank's scatter about
        that mean (its own M2 plus n_r (mean_r - mean)(mean_r - mean)^T), summed. Memory stays O(d^2).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        self.stored_sigma = None
        return self._reduce_with(lambda tensor: all_reduce_sum(tensor, group))

    def _reduce_with(self, all_reduce: Callable[[torch.Tensor], Any]) -> FIDStatistics:
        """The reduction, given a summing all-reduce (tests pass a fake one)."""
        dims = self.dims or 0
        # count, and d, d^2 and a presence flag from the ranks holding features: d must be the same on all
        header = torch.tensor([self.n, dims, dims * dims, 1.0 if dims else 0.0], dtype=torch.float64)
        all_reduce(header)
        total, dims_sum, dims_sq, present = (float(v) for v in header)
        if total == 0:
            return self
        dims = round(dims_sum / present)
        if dims * dims * present != dims_sq or dims * present != dims_sum:
            raise InputError("processes hold features of different sizes")
        mean = np.zeros(dims) if self.mean is None else self.mean
        weighted = torch.from_numpy(mean * self.n)
        all_reduce(weighted)
        global_mean = weighted.numpy() / total
        delta = mean - global_mean
        scatter = np.zeros((dims, dims)) if self.m2 is None else self.m2
        scatter = torch.from_numpy(scatter + np.outer(delta, delta) * self.n)
        all_reduce(scatter)
        self.n, self.mean, self.m2 = int(total), global_mean, scatter.numpy()
        return self

    # -- files ---------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, overwrite: bool = False, spatial: FIDStatistics | None = None,
             images: tuple[tuple[int, ...], Iterable[np.ndarray]] | None = None) -> Path:
        """``mu``, ``sigma`` (float64, as pytorch-fid reads them), ``n`` and JSON ``meta``, written atomically;
        with ``spatial``, also sFID's ``mu_s`` and ``sigma_s``, as an ADM reference batch holds them; with
        ``images`` (an N x H x W x 3 shape and uint8 batches filling it), also ``arr_0``, streamed into the file
        uncompressed, so that precision and recall can be computed against it later."""
        path = Path(path)
        if path.suffix != ".npz":
            raise InputError(f"{path}: statistics files end in .npz (numpy would add it)")
        if path.exists() and not overwrite:
            raise InputError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
        meta = dict(self.meta, format=STATS_FORMAT, n=self.n)
        arrays = {"mu": self.mu.astype(np.float64), "sigma": self.covariance().astype(np.float64)}
        if spatial is not None:
            arrays.update(mu_s=spatial.mu.astype(np.float64), sigma_s=spatial.covariance().astype(np.float64))
        arrays.update(n=np.int64(self.n), meta=np.array(json.dumps(meta, sort_keys=True)))
        with atomic_path(path, suffix=".partial.npz") as tmp, \
                zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            if images is not None:
                _write_image_member(archive, *images)
            for key, value in arrays.items():
                with archive.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, suffix: str = "") -> FIDStatistics:
        """Our files, and pytorch-fid's, clean-fid's, TTUR's and ADM's (``mu`` and ``sigma`` only: warns that their
        provenance is unknown, and ``n`` is then 0 if the file does not say). ``suffix="_s"`` reads the sFID
        statistics an ADM reference batch also holds (``mu_s``, ``sigma_s``)."""
        path = Path(path)
        d = MAX_STATS_DIMS
        mu_key, sigma_key = f"mu{suffix}", f"sigma{suffix}"
        arrays = read_npz(path, {mu_key: 8 * d, sigma_key: 8 * d * d, "meta": 1 << 20, "n": 8})
        if mu_key not in arrays or sigma_key not in arrays:
            raise InputError(f"{path}: no {mu_key!r} and {sigma_key!r} arrays (found {sorted(npz_keys(path))})")
        for key in (mu_key, sigma_key):
            if arrays[key].dtype.kind not in "fiu":
                raise InputError(f"{path}: {key} must be numbers, not {arrays[key].dtype}")
        mu = np.asarray(arrays[mu_key], dtype=np.float64).reshape(-1)
        sigma = np.atleast_2d(np.asarray(arrays[sigma_key], dtype=np.float64))
        if sigma.shape != (mu.size, mu.size):
            raise InputError(f"{path}: {sigma_key} is {sigma.shape}, {mu_key} has {mu.size} entries")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise InputError(f"{path}: {mu_key} or {sigma_key} holds NaN or infinity")
        check_covariance(sigma, f"{path}: {sigma_key}")
        meta: dict[str, Any] = {}
        if "meta" in arrays:
            if arrays["meta"].dtype.kind != "U" or arrays["meta"].ndim != 0:
                raise InputError(f"{path}: its 'meta' entry must be one JSON string")
            try:
                meta = json.loads(str(arrays["meta"]))
            except ValueError:
                raise InputError(f"{path}: its 'meta' entry is not JSON") from None
            if not isinstance(meta, dict):
                raise InputError(f"{path}: its 'meta' entry must be a JSON object")
        else:
            warnings.warn(f"{path}: statistics of unknown provenance (no meta: network, preprocessing and image "
                          "count unknown); FID is comparable only if they match yours", ProvenanceWarning,
                          stacklevel=2)
        try:
            n = int(arrays["n"]) if "n" in arrays else int(meta.get("n", 0))
        except (TypeError, ValueError):
            raise InputError(f"{path}: its image count 'n' is not an integer") from None
        m2 = sigma * (n - 1) if n >= 2 else sigma.copy()
        return cls(n, mu, m2, meta, stored_sigma=sigma)

    def covariance(self) -> np.ndarray:
        """The covariance: the file's own when read from a file (also when its n is unknown)."""
        return self.stored_sigma if self.stored_sigma is not None else self.sigma


@dataclass
class FrechetDistance:
    """FID and its parts: fid = mean_term + trace1 + trace2 - 2 trace_sqrt."""

    fid: float
    mean_term: float
    trace1: float
    trace2: float
    trace_sqrt: float
    n1: int | None
    n2: int | None
    dims: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _clip_noise(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix within rounding of zero (below d * eps * the largest) set to 0: their square
    roots (about 1e-8 of the largest's) would otherwise add up across a rank-deficient matrix's null space."""
    tolerance = values.size * np.finfo(np.float64).eps * max(float(np.abs(values).max(initial=0.0)), 0.0)
    return np.where(values > tolerance, values, 0.0)


def _psd_factor(matrix: np.ndarray) -> np.ndarray:
    """F with F F^T = matrix (symmetric PSD): eigenvectors scaled by the square roots of their eigenvalues, the
    columns of eigenvalues within rounding of zero dropped (so a rank-r matrix gives d x r)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    keep = _clip_noise(values) > 0
    return vectors[:, keep] * np.sqrt(values[keep])


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2), real arithmetic throughout. With S1 = A A^T, the nonzero eigenvalues of S1 S2 are those of
    the symmetric A^T S2 A, so one more symmetric solve (values only) gives the trace. That is exact when those
    eigenvalues are well above their rounding error; when some are not (rank-deficient sides, N <= d), an eigenvalue
    of 1e-14 next to 1 is noise while the singular value 1e-7 it may stand for is not, so the trace is then taken
    as the sum of the singular values of A^T B (S2 = B B^T), which never squares them."""
    a = _psd_factor(sigma1)
    if a.shape[1] == 0:
        return 0.0
    product = a.T @ sigma2 @ a
    values = np.linalg.eigvalsh((product + product.T) / 2)
    smallest, largest = float(values.min()), float(values.max())
    if smallest > 0:
        roots = np.sqrt(values)
        trace = float(roots.sum())
        rounding = np.sqrt(values.size) * np.finfo(np.float64).eps * largest  # each eigenvalue's error, typically
        if rounding * float((0.5 / roots).sum()) <= 1e-12 * trace:  # its first-order effect on the sum
            return trace
    b = _psd_factor(sigma2)
    if b.shape[1] == 0:
        return 0.0
    return float(np.linalg.svd(a.T @ b, compute_uv=False).sum())


def _sqrtm_trace(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid's path: scipy's sqrtm of S1 S2; retried with eps on the diagonals when not finite; an
    imaginary diagonal beyond 1e-3 is an error, a smaller one dropped."""
    try:
        from scipy import linalg
    except ImportError:
        raise InputError("--fd-method sqrtm needs scipy (pip install scipy)") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"singular product; adding {eps} to the covariance diagonals", RuntimeWarning, stacklevel=3)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise InputError(f"sqrtm left an imaginary component of {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


FD_METHODS = ("eigh", "sqrtm")


def frechet_distance(mu1: Any, sigma1: Any = None, mu2: Any = None, sigma2: Any = None, *, method: str = "eigh",
                     n1: int | None = None, n2: int | None = None) -> FrechetDistance:
    """The Fréchet distance between two Gaussians, or between two :class:`FIDStatistics` (pass them as the first
    two arguments). N < 2 or mismatched dimensions are errors; N <= d warns (:class:`RankDeficientWarning`)."""
    if isinstance(mu1, FIDStatistics) and isinstance(sigma1, FIDStatistics):
        a, b = mu1, sigma1
        return frechet_distance(a.mu, a.covariance(), b.mu, b.covariance(), method=method,
                                n1=a.n or None, n2=b.n or None)
    if method not in FD_METHODS:
        raise InputError(f"unknown --fd-method {method!r}; choose from {', '.join(FD_METHODS)}")
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise InputError(f"mismatched dimensions: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    for side, n in (("first", n1), ("second", n2)):
        if n is not None and n < 2:
            raise InputError(f"the {side} set has {n} sample(s); a covariance needs at least 2")
        if n is not None and n <= d:
            warnings.warn(f"the {side} set has {n} samples for {d}-d features: its covariance is rank-deficient "
                          "and FID is biased upwards; use more images than dimensions", RankDeficientWarning,
                          stacklevel=2)
    diff = mu1 - mu2
    trace_sqrt = trace_sqrt_product(sigma1, sigma2) if method == "eigh" else _sqrtm_trace(sigma1, sigma2)
    mean_term, trace1, trace2 = float(diff.dot(diff)), float(np.trace(sigma1)), float(np.trace(sigma2))
    fid = mean_term + trace1 + trace2 - 2 * trace_sqrt
    return FrechetDistance(fid, mean_term, trace1, trace2, trace_sqrt, n1, n2, d, method)


@dataclass
class MeanStd:
    mean: float
    std: float


def _as_float64(features: Any, what: str, dtype: type = np.float64) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=dtype)  # no copy when it already has that type
    if x.ndim != 2:
        raise InputError(f"{what} must be N x d, got shape {x.shape}")
    return x


def kernel_inception_distance(features1: Any, features2: Any, *, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                              seed: int = 2020) -> MeanStd:
    """KID (Bińkowski et al.) as torch-fidelity computes it: the unbiased MMD^2 under the polynomial kernel
    (x.y gamma + coef0)^degree, gamma = 1/d by default, averaged over ``subsets`` random subsets of
    ``subset_size`` per side drawn without replacement from ``RandomState(seed)``. float64 throughout."""
    x, y = _as_float64(features1, "first features"), _as_float64(features2, "second features")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"mismatched feature sizes: {x.shape[1]} vs {y.shape[1]}")
    if min(len(x), len(y)) < subset_size:
        raise InputError(f"KID subsets of {subset_size} need at least that many images per side (have {len(x)} "
                         f"and {len(y)}); lower --kid-subset-size")
    if subset_size < 2 or subsets < 1:
        raise InputError("KID needs subset_size >= 2 and at least one subset")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    m = subset_size
    values = np.zeros(subsets)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T * gamma + coef0) ** degree

    for i in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
        within = (k_aa.sum(axis=1) - np.diagonal(k_aa)).sum() + (k_bb.sum(axis=1) - np.diagonal(k_bb)).sum()
        values[i] = within / (m * (m - 1)) - 2 * k_ab.sum(axis=0).sum() / (m * m)
    return MeanStd(float(values.mean()), float(values.std()))


def inception_score(logits: Any, *, splits: int = 10, shuffle: bool = True, seed: int = 2020,
                    split_size: int | None = None) -> MeanStd:
    """IS (Salimans et al.) as torch-fidelity computes it from unbiased logits: rows shuffled by
    ``RandomState(seed).permutation`` (unless ``shuffle=False``), ``splits`` slices [i N / s, (i + 1) N / s),
    exp of the mean KL(p(y|x) || p(y)) per slice; mean and population std over slices. float64.

    ``split_size=5000`` is the ADM evaluator's convention instead: consecutive slices of that many rows in the
    given order (the last one shorter when N is not a multiple), never shuffled."""
    x = torch.from_numpy(_as_float64(logits, "logits"))
    n = x.shape[0]
    if split_size is not None:
        if split_size < 1 or n < 1:
            raise InputError(f"IS with splits of {split_size} images needs at least one image and a positive size")
        bounds = [(start, min(start + split_size, n)) for start in range(0, n, split_size)]
    else:
        if n < splits or splits < 1:
            raise InputError(f"IS with {splits} splits needs at least {max(splits, 1)} images, have {n}")
        if shuffle:
            x = x[np.random.RandomState(seed).permutation(n)]
        bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]
    scores = [split_score(x[start:stop]) for start, stop in bounds]
    return MeanStd(float(np.mean(scores)), float(np.std(scores)))


def split_score(logits: torch.Tensor) -> float:
    """exp of the mean KL(p(y|x) || p(y)) over one split's logits (float64): one split's Inception Score. Softmax
    is per row, so a split can be scored alone, and memory follows the split rather than N."""
    p, log_p = logits.softmax(dim=1), logits.log_softmax(dim=1)
    marginal = p.mean(dim=0, keepdim=True)
    return float((p * (log_p - marginal.log())).sum(dim=1).mean().exp())


@dataclass
class PrecisionRecall:
    precision: float
    recall: float
    f_score: float
    k: int


def _kth_neighbour_radius(x: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """Each row's distance to its k-th nearest other row (the (k + 1)-th smallest, the row itself being 0)."""
    return torch.cat([torch.cdist(part, x).kthvalue(k + 1, dim=1).values for part in x.split(rows)])


def _inside_any_ball(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, rows: int) -> float:
    """The share of queries within (<=) the radius of at least one centre."""
    inside = [(torch.cdist(part, centres) <= radii).any(dim=1) for part in queries.split(rows)]
    return float(torch.cat(inside).double().mean())


def _paired(generated: Any, real: Any, k: int, what: str,
            dtype: type = np.float64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(_as_float64(generated, "generated features", dtype))
    y = torch.from_numpy(_as_float64(real, "real features", dtype))
    if x.shape[1] != y.shape[1]:
        raise InputError(f"mismatched feature sizes: {x.shape[1]} vs {y.shape[1]}")
    if k < 1 or min(len(x), len(y)) <= k:
        raise InputError(f"{what} with k={k} needs more than k images per side (have {len(x)} and {len(y)})")
    return x, y


@dataclass
class DensityCoverage:
    density: float
    coverage: float
    k: int


def density_coverage(generated: Any, real: Any, *, k: int = 5, max_block: int = 2**24) -> DensityCoverage:
    """Density and coverage (Naeem et al. 2020) as the ``prdc`` package defines them, around the real samples'
    balls (each reaching its k-th nearest real neighbour, strict ``<``): density is the mean number of real balls
    a generated sample falls in, divided by k (it can exceed 1); coverage the share of real balls holding at least
    one generated sample. Unlike precision, density does not reward generated samples that crowd round a few
    outlying real ones. float64, in blocks as :func:`precision_recall`."""
    x, y = _paired(generated, real, k, "density/coverage")
    rows = max(1, max_block // max(len(x), len(y)))
    radii = _kth_neighbour_radius(y, k, rows)
    counts = torch.cat([(torch.cdist(part, y) < radii).sum(dim=1) for part in x.split(rows)])
    nearest = torch.cat([torch.cdist(part, x).amin(dim=1) for part in y.split(rows)])
    return DensityCoverage(float(counts.double().mean()) / k, float((nearest < radii).double().mean()), k)


def precision_recall(generated: Any, real: Any, *, k: int = 3, max_block: int = 2**24,
                     dtype: type = np.float64) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019) as torch-fidelity defines them: precision is the
    share of generated samples inside at least one real sample's ball, recall the share of real samples inside a
    generated one's, a ball reaching a sample's k-th nearest neighbour in its own set. F-score 2PR / max(1e-5,
    P + R). float64 (``dtype=np.float32`` computes on float32 features without copying them); distances are
    computed ``max_block`` at a time (128 MB), so memory is the features plus that block whatever N is."""
    x, y = _paired(generated, real, k, "precision/recall", dtype)
    rows = max(1, max_block // max(len(x), len(y)))
    precision = _inside_any_ball(x, y, _kth_neighbour_radius(y, k, rows), rows)
    recall = _inside_any_ball(y, x, _kth_neighbour_radius(x, k, rows), rows)
    return PrecisionRecall(precision, recall, 2 * precision * recall / max(1e-5, precision + recall), k)


__all__ = ["FD_METHODS", "DensityCoverage", "FIDStatistics", "FrechetDistance", "MeanStd", "PrecisionRecall",
           "ProvenanceWarning", "density_coverage",
           "RankDeficientWarning", "frechet_distance", "inception_score", "kernel_inception_distance",
           "precision_recall", "trace_sqrt_product"]
