"""One batch, from the queue's parts to each request's answer: run, retry by halves, scatter, gather.

The batcher (:mod:`service.batcher`) decides *which* images make a batch; this
module runs the batch it took and hands each request its rows. It knows
nothing of models either: the batch function returns :class:`Rows`, anything
that can say how many rows it has, be sliced and be joined
(:class:`service.batch_result.BatchResult` is the service's).

* **Failures are narrowed down.** A batch that raises (CUDA out of memory, a
  poisoned input) is retried in halves down to single images; only the images
  that fail alone are reported as failed, with the reason. The worker survives.
* **Scatter without copies in the common case.** A request whose images ran
  in one clean batch gets that batch's rows as views; a request split across
  batches, or with failed images, is gathered once it is complete (NaN rows
  where images failed).
* **One wake-up per loop per batch.** Answers go back to each event loop with
  one ``call_soon_threadsafe``, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, Self, TypeVar

import numpy as np

log = logging.getLogger(__name__)


class Rows(Protocol):
    """What a batch function returns: per-image rows that can be sliced and joined whole."""

    def __len__(self) -> int: ...

    def rows(self, start: int, stop: int) -> Self: ...

    @classmethod
    def gather(cls, pieces: Sequence[tuple[int, Self]], total: int) -> Self: ...


R = TypeVar("R", bound=Rows)
BatchFunction = Callable[[np.ndarray], R]


@dataclass
class BatchOutput(Generic[R]):
    """One request's rows, in request order (None when every image failed), plus images that failed alone."""

    result: R | None
    failures: dict[int, str]


class Piece(NamedTuple, Generic[R]):
    """Rows that start at row ``at`` of the whole they belong to (a batch, or a request)."""

    at: int
    rows: R


@dataclass(eq=False)
class Pending(Generic[R]):
    """One request in the queue: its images, how far the worker has taken them, and the rows back so far."""

    images: np.ndarray
    deadline: float
    enqueued: float
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    immediate: bool
    next_index: int = 0
    remaining: int = 0
    pieces: list[Piece[R]] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Part:
    """Images ``start:stop`` of one request, taken into a batch at row ``offset``."""

    pending: Pending
    start: int
    stop: int
    offset: int

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete request's output, on its way to the future its request awaits."""

    future: asyncio.Future
    output: BatchOutput


@dataclass(frozen=True, slots=True)
class BatchRun(Generic[R]):
    """A batch's rows as pieces (a piece per range that ran clean) and the images that failed alone."""

    pieces: list[Piece[R]]
    failures: dict[int, str]


class BatchRunner(Generic[R]):
    """Runs one batch with the retry by halves; counts failed batches and images."""

    def __init__(self, label: str, batch_failures, image_failures) -> None:
        self.label = label
        self._m_batch_fail = batch_failures
        self._m_image_fail = image_failures

    def run(self, parts: list[Part], run: BatchFunction, recover: Callable[[], None] | None) -> BatchRun[R]:
        """The parts' images as one batch through ``run``; a failing range is retried in halves."""
        if len(parts) == 1:
            images = parts[0].pending.images[parts[0].start : parts[0].stop]
        else:
            images = np.concatenate([part.pending.images[part.start : part.stop] for part in parts])
        done = BatchRun([], {})
        self._run_range(images, 0, len(images), run, recover, done)
        return done

    def _run_range(self, images: np.ndarray, lo: int, hi: int, run, recover, done: BatchRun[R]) -> None:
        """Run ``images[lo:hi]``; on failure retry each half, down to single images."""
        try:
            rows = run(images[lo:hi])
            if len(rows) != hi - lo:
                raise RuntimeError(f"{len(rows)} rows for {hi - lo} images")
            done.pieces.append(Piece(lo, rows))
        except Exception as exc:  # noqa: BLE001 - narrowed down below, reported per image
            self._m_batch_fail.inc()
            if recover is not None:
                try:
                    recover()
                except Exception:  # noqa: BLE001
                    log.exception("recovering after a failed batch")
            if hi - lo == 1:
                done.failures[lo] = f"{type(exc).__name__}: {exc}"
                self._m_image_fail.inc()
                log.warning("%s: image failed inference alone: %s", self.label, done.failures[lo])
                return
            mid = (lo + hi) // 2
            self._run_range(images, lo, mid, run, recover, done)
            self._run_range(images, mid, hi, run, recover, done)


def answer(parts: list[Part], done: BatchRun) -> None:
    """Scatter a batch's rows to its requests and wake each event loop once for the requests now complete."""
    finished: dict[asyncio.AbstractEventLoop, list[Answer]] = {}
    for part in parts:
        output = scatter(part, done)
        if output is not None:
            finished.setdefault(part.pending.loop, []).append(Answer(part.pending.future, output))
    for loop, answers in finished.items():
        try:  # one wake-up of the loop per batch, not one per request
            loop.call_soon_threadsafe(_resolve_all, answers)
        except RuntimeError:  # the loop closed under us (shutdown); nobody is waiting
            pass


def _resolve_all(answers: list[Answer]) -> None:
    for done in answers:
        if not done.future.done():
            done.future.set_result(done.output)


def scatter(part: Part, done: BatchRun) -> BatchOutput | None:
    """Add this part's rows of the batch to its request; the request's output once complete."""
    pending, offset, count = part.pending, part.offset, part.count
    for at, rows in done.pieces:
        a, b = max(at, offset), min(at + len(rows), offset + count)
        if a < b:
            whole = a == at and b == at + len(rows)
            pending.pieces.append(Piece(part.start + a - offset, rows if whole else rows.rows(a - at, b - at)))
    for index, reason in done.failures.items():
        if offset <= index < offset + count:
            pending.failures[part.start + index - offset] = reason
    pending.remaining -= count
    if pending.remaining or pending.cancelled:
        return None
    return BatchOutput(join(pending.pieces, len(pending.images)), dict(sorted(pending.failures.items())))


def join(pieces: list[Piece[R]], total: int) -> R | None:
    """A request's rows from its pieces: the one piece itself in the common case (a whole request in one
    clean batch: no copy), else gathered, NaN where images failed; None when every image failed."""
    if not pieces:
        return None
    if len(pieces) == 1 and len(pieces[0].rows) == total:
        return pieces[0].rows
    return type(pieces[0].rows).gather(pieces, total)
