"""Dynamic batching: one bounded queue per model, served by the model's one worker thread.

Why this shape: a flow scores a batch of 32 images in far less than 32 times the
time of one, but a request rarely brings 32 images. So images of concurrent
requests join one queue and the model's single worker thread runs them together.

The batcher knows nothing of models: it queues images, waits for company,
takes a batch, hands it to the function its worker gives :meth:`Batcher.serve`
and scatters the result's rows back to each request. Loading, warming up and
readiness are the worker's (:mod:`service.worker`); what a batch computes is
the model's pipeline's (:mod:`service.postprocess` for the OOD scores). The
result only has to follow :class:`Rows` (:class:`service.batch_result.BatchResult` does).

The rules, each for a reason:

* **A lone request never waits for company.** When a request reaches an idle
  worker and an empty queue it runs at once. Images only accumulate while the
  worker is busy (they would have waited anyway) or, once the worker is free,
  for at most ``max_batch_delay`` counted from the oldest queued image's
  arrival, and only while company is expected: the worker waits only if, at
  the recent arrival rate, at least one more image should arrive before that
  delay runs out. At low concurrency (one or two clients) nobody else is coming
  and a wait would be pure latency (measured: dynamic batching was slower than
  none at 2 and 4 clients when the worker always waited out the delay).
* **Bounded queue, in images.** Past ``max_queue_images`` a request is refused
  at once (:class:`QueueFull` -> 503 + Retry-After) instead of timing out later.
* **Admission before work.** A request can :meth:`Batcher.reserve` its images'
  places in the queue before it decodes them: under overload the refusal then
  costs a multipart parse, not the decoding of images nobody will score (the
  issue measured goodput falling to 29% of capacity at 10x overload without it).
  Reserved places count against the bound until the images are queued or the
  reservation is released.
* **Deadlines.** A request past its deadline gets :class:`DeadlineExceeded`
  (-> 504) and its not-yet-run images leave the queue, so nobody computes
  answers no one will read.
* **Big requests are split** across batches of at most ``max_batch_size`` and
  reassembled in order.
* **Failures are narrowed down**, by retrying a failing batch in halves
  (:mod:`service.batch_run`, which runs one batch and scatters its rows).
* The batch function runs only in the worker thread, never on the event loop;
  results come back to the loop with ``call_soon_threadsafe``. Every duration
  uses the monotonic clock.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic

import numpy as np

from .batch_run import BatchFunction, BatchOutput, BatchRunner, Part, Pending, R, answer
from .metrics import Metrics

# weight of the newest inter-arrival gap in the smoothed arrival rate (about the last ten arrivals)
ARRIVAL_SMOOTHING = 0.1


class BatcherError(RuntimeError):
    """Base of the batcher's refusals; the API maps each to a status code."""


class QueueFull(BatcherError):
    """The queue holds too many images already (503)."""


class Draining(BatcherError):
    """The service is shutting down and takes no new work (503)."""


class NotReady(BatcherError):
    """The model is still loading or warming up, or failed to load (503)."""


class DeadlineExceeded(BatcherError):
    """The request's deadline passed before its images were scored (504)."""


class _Expired(Exception):
    """Set on a request's future by its deadline's timer; :meth:`Batcher.submit` turns it into DeadlineExceeded."""


def _expire(future: asyncio.Future) -> None:
    """(on the loop, at the deadline) Fail the request's wait unless its answer came first."""
    if not future.done():
        future.set_exception(_Expired())


@dataclass(eq=False)
class Reservation:
    """Places for ``count`` images held in a batcher's queue bound until :meth:`Batcher.submit` takes them.

    A context manager: leaving it releases the places unless ``submit`` already took them.
    """

    batcher: Batcher
    count: int
    held: bool = True

    def release(self) -> None:
        self.batcher._release(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Batcher(Generic[R]):
    """The bounded queue of one model: admission, the adaptive wait, scatter/gather, retry by halves."""

    def __init__(
        self,
        name: str,
        version: str,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue_images: int,
        dynamic: bool = True,
    ) -> None:
        """The bounds come from :class:`service.settings.Settings` (their one set of defaults)."""
        self.name, self.version = name, version
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue_images = max_queue_images
        self.dynamic = dynamic
        self._queue: deque[Pending[R]] = deque()
        self._queued_images = 0
        self._reserved_images = 0  # places held by requests still decoding (see reserve)
        self._cond = threading.Condition()
        self._busy = False
        self._arrival_gap_s = math.inf  # smoothed seconds between arriving images
        self._last_arrival: float | None = None
        self._open = False  # the worker serves: submit takes work
        self._closed_reason: str | None = None  # why it never will (the model failed to load)
        self._draining = False
        self._stopping = False
        labels = (name, version)
        self._m_wait = metrics.queue_wait.labels(*labels)
        self._m_depth = metrics.queue_images.labels(*labels)
        self._runner: BatchRunner[R] = BatchRunner(
            f"{name}/{version}", metrics.batch_failures.labels(*labels), metrics.image_failures.labels(*labels)
        )
        self._m_depth.set(0)
        metrics.queue_capacity.labels(*labels).set(max_queue_images)  # the bound the queue alert divides by

    # ---- state ----------------------------------------------------------------------------------

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @property
    def idle(self) -> bool:
        return not self._queue and not self._busy

    @property
    def draining(self) -> bool:
        return self._draining

    def open(self) -> None:
        """The worker is ready: from now on :meth:`submit` takes work."""
        self._open = True

    def refuse(self, reason: str) -> None:
        """The worker will never serve (its model failed to load): :meth:`submit` says why."""
        self._closed_reason = reason

    def begin_drain(self) -> None:
        """Refuse new work from now on; queued and running work still finishes."""
        self._draining = True

    def stop(self) -> None:
        """Drain, and let :meth:`serve` return once what is queued has run (the worker joins its thread)."""
        self.begin_drain()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # ---- the loop's side -------------------------------------------------------------------------

    def reserve(self, count: int) -> Reservation:
        """Hold places for ``count`` images, or raise :class:`QueueFull` at once (before any decoding)."""
        with self._cond:
            self._check_room(count)
            self._reserved_images += count
        return Reservation(self, count)

    def check_room(self, count: int) -> None:
        """Raise :class:`QueueFull` if ``count`` more images would not fit now (a cheap early refusal that
        holds nothing: a request that passes still reserves its places before decoding)."""
        with self._cond:
            self._check_room(count)

    def _release(self, reservation: Reservation) -> None:
        with self._cond:
            if reservation.held:
                reservation.held = False
                self._reserved_images -= reservation.count

    def _check_room(self, count: int) -> None:
        """Raise :class:`QueueFull` if ``count`` more images would pass the bound (lock held)."""
        held = self._queued_images + self._reserved_images
        if held + count > self.max_queue_images:
            raise QueueFull(
                f"queue of {self.name}/{self.version} holds {held} images (queued or being decoded); "
                f"{count} more would pass its bound of {self.max_queue_images}"
            )

    async def submit(
        self, images: np.ndarray, deadline: float, reservation: Reservation | None = None
    ) -> BatchOutput[R]:
        """Queue ``images`` (uint8 ``[N,C,H,W]``) and wait for their rows until ``deadline`` (monotonic).

        With a ``reservation`` (from :meth:`reserve`) the images take its places. While draining, work
        already admitted by the data plane is still taken (it was accepted before the drain began); only
        a stopped worker refuses.
        """
        if self._stopping:
            raise Draining("the server is shutting down")
        if not self._open:
            raise NotReady(self._closed_reason or f"model {self.name}/{self.version} is still loading")
        count = len(images)
        loop = asyncio.get_running_loop()
        pending = Pending(
            images=images,
            deadline=deadline,
            enqueued=time.monotonic(),
            future=loop.create_future(),
            loop=loop,
            immediate=False,
            remaining=count,
        )
        with self._cond:
            if reservation is not None and reservation.held:
                reservation.held = False
                self._reserved_images -= reservation.count
            self._check_room(count)
            pending.immediate = not self._busy and not self._queue
            self._note_arrival(pending.enqueued, count)
            self._queue.append(pending)
            self._queued_images += count
            self._m_depth.set(self._queued_images)
            self._cond.notify()
        # One timer that fails the future at the deadline: 0.6 us of loop time per request on uvloop
        # against 3.3 us for an ``asyncio.timeout`` context (no cancel/uncancel of the task). asyncio's
        # clock is the monotonic clock.
        expiry = loop.call_later(max(0.0, deadline - time.monotonic()), _expire, pending.future)
        try:
            return await pending.future
        except (_Expired, asyncio.CancelledError) as exc:
            self._withdraw(pending)
            if isinstance(exc, _Expired):
                raise DeadlineExceeded(
                    f"deadline passed with {pending.remaining} of {count} images not scored"
                ) from None
            raise
        finally:
            expiry.cancel()

    def _withdraw(self, pending: Pending[R]) -> None:
        """Drop a request's not-yet-run images from the queue (deadline passed or client gone)."""
        with self._cond:
            pending.cancelled = True
            try:
                self._queue.remove(pending)
            except ValueError:
                return
            self._queued_images -= len(pending.images) - pending.next_index
            self._m_depth.set(self._queued_images)

    # ---- the worker's side -----------------------------------------------------------------------

    def serve(self, run: BatchFunction, recover: Callable[[], None] | None = None) -> None:
        """(the worker thread) Run batches with ``run`` until :meth:`stop` and an empty queue.

        ``recover`` is called after a batch raised, before its halves are retried (e.g. to give
        cached GPU memory back).
        """
        while True:
            with self._cond:
                self._busy = False
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    break  # stopping and nothing left
                self._fill_wait()
                parts = self._take()
                self._busy = bool(parts)
            if parts:
                self._run(parts, run, recover)

    def _note_arrival(self, now: float, count: int) -> None:
        """Track the arrival rate (lock held): an exponential average of the gap per image."""
        if self._last_arrival is not None:
            gap = (now - self._last_arrival) / count
            if math.isinf(self._arrival_gap_s):
                self._arrival_gap_s = gap
            else:
                self._arrival_gap_s += ARRIVAL_SMOOTHING * (gap - self._arrival_gap_s)
        self._last_arrival = now

    def _fill_wait(self) -> None:
        """Wait (lock held) for more images while some are expected before the oldest's delay runs out."""
        if self.max_batch_delay_s <= 0 or not self.dynamic or self._queue[0].immediate:
            return
        deadline = self._queue[0].enqueued + self.max_batch_delay_s
        while self._queue and self._queued_images < self.max_batch_size and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0 or left < self._arrival_gap_s:
                return  # the delay is over, or nobody is expected before it is
            self._cond.wait(left)

    def _take(self) -> list[Part]:
        """Pop up to ``max_batch_size`` images from the head of the queue (lock held)."""
        parts: list[Part] = []
        taken = 0
        now = time.monotonic()
        while self._queue and taken < self.max_batch_size:
            pending = self._queue[0]
            start = pending.next_index
            stop = min(len(pending.images), start + self.max_batch_size - taken)
            parts.append(Part(pending, start, stop, taken))
            self._m_wait.observe(now - pending.enqueued)
            pending.next_index = stop
            taken += stop - start
            if stop == len(pending.images):
                self._queue.popleft()
            if not self.dynamic:
                break  # batching disabled: a batch never mixes requests
        self._queued_images -= taken
        self._m_depth.set(self._queued_images)
        return parts

    def _run(self, parts: list[Part], run: BatchFunction, recover: Callable[[], None] | None) -> None:
        done = self._runner.run(parts, run, recover)
        # Idle from here on: a request sent in reaction to these answers must find the worker idle, or it
        # would wait for company (and on a loaded machine this thread may be descheduled for a while).
        with self._cond:
            self._busy = bool(self._queue)
        answer(parts, done)
