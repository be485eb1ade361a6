"""The data plane: everything between "the API parsed a request" and "here are the numbers".

The REST and V2 layers only translate HTTP; this module holds the logic both
share, so ``POST /score`` and ``POST /v2/models/{name}/infer`` cannot drift
apart: pick the model, decode and check the pixels, queue the images on the
model's queue under the request's deadline (its worker runs the model's
pipeline, :mod:`service.pipeline`: the graph, then PNG complexity and every
score and p-value, once per batch, into a :class:`~service.batch_result.BatchResult`),
then apply the request's score and decision rule (``alpha``, the
calibration-conditional cutoff, or Benjamini-Hochberg at ``fdr``: see
:mod:`service.guarantees`) to get each image's flag.
Decoding runs in a small thread pool, never on the event loop; only a tensor of
at most ``settings.inline_prepare_pixels`` values is checked on the loop, which
is cheaper than the trip to the pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import conformal
from .batch_result import BatchResult
from .batch_run import BatchOutput
from .batcher import BatcherError, DeadlineExceeded, Draining, NotReady, QueueFull, Reservation
from .decision import Decision, flag_decisions
from .decode import decode_images, tensor_to_images
from .drift import DriftTracker
from .errors import ServiceError
from .guarantees import ALPHA_RULE, BH_RULE, CONDITIONAL_RULE, DecisionRule, threshold_table
from .metrics import Metrics
from .params import ScoreParams
from .repository import ModelEntry, ModelRepository
from .request_context import RequestTracker
from .settings import Settings, selects

log = logging.getLogger(__name__)

# the error code (and metrics reason) of each batcher refusal answered 503 + Retry-After
REFUSAL_CODES = {QueueFull: "queue_full", Draining: "draining", NotReady: "not_ready"}


@dataclass
class Scored:
    """One request's answer: per-image stats and decisions; ``failures`` maps index -> reason (500)."""

    entry: ModelEntry
    alpha: float | None  # None when the rule decides the batch as a whole (fdr)
    score: str
    stats: Mapping[str, np.ndarray]  # the graph's outputs, by service.artifact.OUTPUT_NAMES
    decisions: list[Decision | None]
    failures: dict[int, str]
    rule: DecisionRule | None = None
    cutoff: float | None = None  # the largest p-value the rule flagged in this request

    @property
    def decision(self) -> dict | None:
        """The response's ``decision`` object (None under the plain alpha rule: such answers do not change)."""
        return None if self.rule is None else self.rule.describe(self.cutoff)

    def __len__(self) -> int:
        return len(self.decisions)

    def failure(self) -> ServiceError | None:
        """The 500 of a request some of whose images failed inference even alone (None: none failed)."""
        if not self.failures:
            return None
        first = min(self.failures)
        message = f"{len(self.failures)} of {len(self)} images failed inference: {self.failures[first]}"
        return ServiceError(500, "inference_failed", message, first)


def check_level(value: float, name: str, code: str) -> float:
    """A level in (0, 1) or a 422 that names it."""
    try:
        return conformal.check_level(value, name)
    except ValueError as exc:
        raise ServiceError(422, code, str(exc)) from None


def finite(value) -> float | None:
    """JSON has no NaN or infinity: such values are sent as null."""
    value = float(value)
    return value if math.isfinite(value) else None


class DataPlane:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: Metrics) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.draining = False
        self.requests = RequestTracker(metrics)  # requests in flight: what drain() waits for
        self._children: dict[tuple[str, str, str], tuple] = {}
        # sliding-window drift gauges per model (issue 5)
        self.drift = DriftTracker(metrics, settings.drift_window, delta=settings.drift_delta)
        self.drift.attach(repository.all())

    async def blocking(self, fn, *args, **kwargs):
        """Run CPU-bound ``fn`` in the decode pool so the event loop keeps serving."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    # ---- admission -----------------------------------------------------------------------------

    def model(self, name: str | None, version: str | None = None) -> ModelEntry:
        return self.repository.get(name, version)

    def admit(self, entry: ModelEntry | None = None) -> None:
        """Refuse work at once when draining or not ready (503 + Retry-After)."""
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if self.draining:
            raise ServiceError(503, "draining", "the server is shutting down", headers=retry, reason="draining")
        if entry is not None and not entry.ready:
            message = entry.load_error or f"model {entry.name}/{entry.version} is loading or warming up"
            raise ServiceError(503, "not_ready", message, headers=retry, reason="not_ready")
        if entry is not None:
            self.check_room(entry)  # a full queue refuses before the body is even read

    def check_params(self, entry: ModelEntry, params: ScoreParams) -> tuple[DecisionRule, str]:
        detector = entry.detector
        rule = self.decision_rule(entry, params)
        score = params.score or detector.default_score
        if score not in detector.score_names:
            raise ServiceError(
                422, "unknown_score", f"model {entry.name} has no score {score!r}; it has {list(detector.score_names)}"
            )
        return rule, score

    def conditional_by_default(self, entry: ModelEntry) -> bool:
        return selects(self.settings.conditional_models, entry.name, entry.version)

    def decision_rule(self, entry: ModelEntry, params: ScoreParams) -> DecisionRule:
        """The request's rule (service/guarantees.py): per-image alpha, calibration-conditional, or BH."""
        if params.fdr is not None:
            if params.alpha is not None:
                raise ServiceError(
                    422, "conflicting_parameters", "alpha and fdr decide the flags in different ways: send one"
                )
            if params.conditional or params.delta is not None:
                raise ServiceError(
                    422,
                    "conflicting_parameters",
                    "fdr decides by Benjamini-Hochberg on the plain p-values; it takes no conditional or delta",
                )
            return DecisionRule(BH_RULE, check_level(params.fdr, "fdr", "invalid_fdr"))
        alpha = entry.detector.default_alpha if params.alpha is None else params.alpha
        alpha = check_level(alpha, "alpha", "invalid_alpha")
        conditional = params.conditional
        if conditional is False and params.delta is not None:
            raise ServiceError(
                422, "conflicting_parameters", "delta belongs to the conditional flag, not conditional=false"
            )
        if conditional is None:
            conditional = params.delta is not None or self.conditional_by_default(entry)
        if not conditional:
            return DecisionRule(ALPHA_RULE, alpha)
        delta = self.settings.conditional_delta if params.delta is None else params.delta
        return DecisionRule(CONDITIONAL_RULE, alpha, check_level(delta, "delta", "invalid_delta"))

    def describe(self, entry: ModelEntry) -> dict:
        """``GET /models``'s entry: the model's info plus how its flags are decided and where they start."""
        delta = self.settings.conditional_delta
        return {
            **entry.info(),
            "decision": {
                "default_rule": CONDITIONAL_RULE if self.conditional_by_default(entry) else ALPHA_RULE,
                "conditional_delta": delta,
                "thresholds": threshold_table(entry.detector.calibration, delta),
            },
        }

    def check_count(self, count: int) -> None:
        if count > self.settings.max_images_per_request:
            raise ServiceError(
                413,
                "too_many_images",
                f"{count} images in one request; the limit is {self.settings.max_images_per_request}",
            )

    def deadline(self, received: float, params: ScoreParams) -> float:
        timeout = self.settings.request_timeout_s
        if params.timeout_s is not None:
            timeout = min(timeout, max(0.0, params.timeout_s))
        return received + timeout

    # ---- scoring -------------------------------------------------------------------------------

    async def score_encoded(
        self, entry: ModelEntry, blobs: list[bytes], params: ScoreParams, received: float
    ) -> Scored:
        self.admit(entry)
        self.check_count(len(blobs))
        rule, score = self.check_params(entry, params)
        s = self.settings
        with self.reserve(entry, len(blobs)) as places:  # refused before decoding, not after
            images = await self.blocking(
                decode_images, blobs, entry.manifest.input, s.max_image_pixels, s.resize, s.convert_channels
            )
            return await self._score(entry, images, rule, score, self.deadline(received, params), places)

    async def score_tensor(self, entry: ModelEntry, array: np.ndarray, params: ScoreParams, received: float) -> Scored:
        self.admit(entry)
        if array.ndim in (3, 4):
            self.check_count(len(array))
        rule, score = self.check_params(entry, params)
        s = self.settings
        convert = (tensor_to_images, array, entry.manifest.input, s.resize, s.convert_channels)
        with self.reserve(entry, len(array) if array.ndim in (3, 4) else 0) as places:
            if array.size <= s.inline_prepare_pixels:  # checking a few pixels costs less than a trip to the pool
                images = convert[0](*convert[1:])
            else:
                images = await self.blocking(*convert)
            return await self._score(entry, images, rule, score, self.deadline(received, params), places)

    def reserve(self, entry: ModelEntry, count: int) -> Reservation:
        """The request's places in the model's queue, held while its images decode (503 at once if full)."""
        with self._refusals_as_http():
            return entry.batcher.reserve(count)

    def check_room(self, entry: ModelEntry, count: int = 1) -> None:
        """503 at once, before the body is read or parsed, when ``count`` images would not fit the queue."""
        with self._refusals_as_http():
            entry.batcher.check_room(count)

    @contextmanager
    def _refusals_as_http(self):
        """The batcher's refusals as their HTTP errors: 503 + Retry-After (queue full, draining, not
        ready), 504 past the deadline; the one place these are mapped."""
        try:
            yield
        except DeadlineExceeded as exc:
            raise ServiceError(504, "deadline_exceeded", str(exc)) from None
        except BatcherError as exc:
            code = REFUSAL_CODES[type(exc)]
            retry = {"Retry-After": str(self.settings.retry_after_s)}
            raise ServiceError(503, code, str(exc), headers=retry, reason=code) from None

    async def _score(
        self,
        entry: ModelEntry,
        images: np.ndarray,
        rule: DecisionRule,
        score: str,
        deadline: float,
        places: Reservation | None = None,
    ) -> Scored:
        # admitted already: a request accepted before a drain began runs to its end
        if time.monotonic() >= deadline:
            raise ServiceError(504, "deadline_exceeded", "the deadline passed before the images were queued")
        with self._refusals_as_http():
            out = await entry.batcher.submit(images, deadline, places)
        decisions, cutoff = self._decisions(entry, out, len(images), score, rule)
        result = out.result or BatchResult.unscored(len(images), entry.manifest.levels)
        self._count(entry, decisions, score)
        self.drift.observe(entry, result.bpd, decisions)
        described = None if rule.rule == ALPHA_RULE else rule
        return Scored(entry, rule.alpha, score, result.outputs, decisions, out.failures, described, cutoff)

    @staticmethod
    def _decisions(
        entry: ModelEntry, out: BatchOutput[BatchResult], count: int, score: str, rule: DecisionRule
    ) -> tuple[list[Decision | None], float | None]:
        """Per-image verdicts from the scores and p-values the worker computed, and the rule's p-value cutoff."""
        if out.result is None:
            return [None] * count, None
        scores = out.result.scores
        p_values = out.result.p_values.get(score)
        cutoff = None
        if p_values is not None:  # the rule sees only the images that were scored
            scored = p_values if not out.failures else np.delete(p_values, list(out.failures))
            cutoff = rule.cutoff(scored, len(entry.detector.calibration[score]))
        return flag_decisions(scores, score, p_values, cutoff, out.failures), cutoff

    def _count(self, entry: ModelEntry, decisions: list[Decision | None], score: str) -> None:
        key = (entry.name, entry.version, score)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a key; per request that adds up
            labels = (entry.name, entry.version)
            children = (
                self.metrics.images.labels(*labels),
                self.metrics.ood_images.labels(*labels, score),
                self.metrics.p_value.labels(*labels, score),
            )
            self._children[key] = children
        images, ood_images, histogram = children
        done = [d for d in decisions if d is not None]
        images.inc(len(done))
        flagged = sum(1 for d in done if d.ood)
        if flagged:
            ood_images.inc(flagged)
        for d in done:
            if d.p_value is not None:
                histogram.observe(d.p_value)

    # ---- shutdown ------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Readiness false and new work refused from now on; what is queued still runs."""
        self.draining = True
        self.repository.begin_drain()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight and every queue is empty (at most ``timeout`` s)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.requests.inflight == 0 and self.repository.idle:
                return True
            await asyncio.sleep(0.02)
        log.warning("drain timeout: %d requests still in flight", self.requests.inflight)
        return False

    def close(self, timeout: float | None = None) -> None:
        self.repository.stop(timeout)
        self.executor.shutdown(wait=False, cancel_futures=True)
