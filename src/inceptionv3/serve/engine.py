"""The model thread: one thread owns the model, behind a bounded queue, and batches what is already waiting.

Batching is opportunistic: the thread takes the first job, then whatever else is queued, up to ``max_batch``,
waiting at most ``max_delay_ms`` for more (0 by default: waiting for images that may never come costs latency).
It does wait for images that are coming: while others are still being decoded (``incoming``), it waits for them
up to ``FILL_WAIT_S``, so that under load a batch fills instead of the model taking images one or two at a time as
they leave the decoders; a lone image never waits. Decoding happens before a job is queued, in a thread pool, so
the model thread only stacks crops and runs the network. Explanations run on the same thread, one at a time,
because Grad-CAM hooks the shared model.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..inference import NON_FINITE_OUTPUT, Classifier

FILL_WAIT_S = 0.02
"""How long a batch waits for images still being decoded (about two decodes of a phone photo at a reduced DCT
scale); without any, it runs at once."""


class QueueFullError(Exception):
    """The queue is at its bound: the caller answers 503 with Retry-After."""


@dataclass
class Job:
    kind: str  # "predict" or "features" (the views of Classifier.load_views), or "explain" (the decoded photo)
    image: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class NonFiniteOutput(ValueError):
    """An image's features are not finite (NaN or inf weights): that image's error, as for its scores."""


@dataclass
class Observer:
    """Hooks for metrics (the app fills them in); no-ops by default."""

    queue_wait: Any = None
    inference: Any = None
    batch_size: Any = None


class Engine:
    def __init__(self, classifier: Classifier, *, max_batch: int = 8, max_delay_ms: float = 0.0,
                 queue_size: int = 64, observer: Observer | None = None, name: str = "model",
                 incoming: Callable[[], int] | None = None) -> None:
        self.classifier = classifier
        self.max_batch = max(1, max_batch)
        self.max_delay = max(0.0, max_delay_ms) / 1000
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, queue_size))
        self.observer = observer or Observer()
        self.incoming = incoming or (lambda: 0)
        """Images being decoded that will join the queue (the server's decode backlog)."""
        self.ready = threading.Event()
        self.settled = threading.Event()
        """Set once the warm-up has ended either way: ready, or ``failed``."""
        self.failed: BaseException | None = None
        self.unhealthy: str | None = None
        """Why readiness is refused although the model runs (its output on the warm-up batch was not finite)."""
        self._thread = threading.Thread(target=self._run, name=f"inceptionv3-{name}", daemon=True)

    # -- the public side (any thread) --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> Future:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError from None
        return job.future

    def depth(self) -> int:
        return self.queue.qsize()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every queued job, then end the thread (the sentinel queues behind them)."""
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout)

    # -- the model thread ----------------------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """A batch of 1 and one of max_batch: torch.compile's fixed batch and OpenVINO's first run happen here,
        before any request waits on them."""
        crop = self.classifier.preprocess.crop
        for n in sorted({1, self.max_batch}):
            scores = self.classifier.scores(torch.zeros(n, 3, crop, crop))
            if not torch.isfinite(scores).all():  # NaN or inf weights: requests still get their own error
                self.unhealthy = NON_FINITE_OUTPUT

    def _run(self) -> None:
        try:
            self._warm_up()
        except BaseException as exc:  # reported by /readyz and the model card; the server stays live
            self.failed = exc
            self.settled.set()
            return
        self.ready.set()
        self.settled.set()
        stopping = False
        while not stopping:
            job = self.queue.get()
            if job is None:
                break
            if job.kind != "predict":
                self._alone(job)
                continue
            batch, later = [job], []
            started = time.monotonic()
            deadline, filling = started + self.max_delay, started + max(self.max_delay, FILL_WAIT_S)
            while len(batch) < self.max_batch:
                now = time.monotonic()
                remaining = (deadline if self.queue.qsize() or not self.incoming() else filling) - now
                try:
                    nxt = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                (batch if nxt.kind == "predict" else later).append(nxt)
            self._predict(batch)
            for job in later:
                self._alone(job)

    def _start(self, jobs: list[Job]) -> list[Job]:
        """The jobs still wanted (a request that timed out cancelled its future), with their queue wait noted."""
        now = time.monotonic()
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if self.observer.queue_wait:
            for job in live:
                self.observer.queue_wait(now - job.enqueued)
        return live

    def _predict(self, jobs: list[Job]) -> None:
        jobs = self._start(jobs)
        if not jobs:
            return
        started = time.monotonic()
        try:
            predictions = self.classifier.predict_views([job.image for job in jobs], batch_size=len(jobs))
        except Exception as exc:  # the whole batch failed: every waiting request hears why
            for job in jobs:
                job.future.set_exception(exc)
            return
        if self.observer.inference:
            self.observer.inference(time.monotonic() - started)
        if self.observer.batch_size:
            self.observer.batch_size(len(jobs))
        for job, prediction in zip(jobs, predictions, strict=True):
            job.future.set_result(prediction)

    def _alone(self, job: Job) -> None:
        """An explanation (``explain``) or an image's features (``features``), one job at a time."""
        if not self._start([job]):
            return
        started = time.monotonic()
        try:
            if job.kind == "explain":
                result = self.classifier.explain_decoded(job.image, **job.params)
            else:
                result = self.classifier.embed_views([job.image], **job.params)[0]
                if not all(np.isfinite(v).all() for v in result.values()):
                    raise NonFiniteOutput(NON_FINITE_OUTPUT)
        except Exception as exc:
            job.future.set_exception(exc)
            return
        if self.observer.inference:
            self.observer.inference(time.monotonic() - started)
        job.future.set_result(result)


__all__ = ["Engine", "Job", "NonFiniteOutput", "Observer", "QueueFullError"]
