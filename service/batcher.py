"""Dynamic batching: one bounded queue and one worker thread per model.

Why this shape: a flow scores a batch of 32 images in far less than 32 times the
time of one, but a request rarely brings 32 images. So images of concurrent
requests join one queue and the model's single worker thread runs them together.

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
* **Failures are narrowed down.** A batch that raises (CUDA out of memory, a
  poisoned input) is retried in halves down to single images; only the images
  that fail alone are reported as failed, with the reason. The worker survives.
* The model runs only in the worker thread, never on the event loop; results
  come back to the loop with ``call_soon_threadsafe``. Every duration uses the
  monotonic clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .metrics import Metrics

log = logging.getLogger(__name__)

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


@dataclass
class BatchOutput:
    """The graph outputs for one request's images, in request order, plus images that failed alone."""

    stats: dict[str, np.ndarray]
    failures: dict[int, str]


@dataclass(eq=False)
class _Pending:
    images: np.ndarray
    deadline: float
    enqueued: float
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    immediate: bool
    next_index: int = 0
    remaining: int = 0
    outputs: dict[str, np.ndarray] | None = None
    failures: dict[int, str] = field(default_factory=dict)
    cancelled: bool = False


def _resolve(future: asyncio.Future, value: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _resolve_all(answers: list[tuple[asyncio.Future, object]]) -> None:
    for future, value in answers:
        _resolve(future, value, None)


def warmup_sizes(max_batch_size: int) -> list[int]:
    """Batch-size buckets run once at start: powers of two up to, and including, the maximum."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


class Batcher:
    """The queue and worker thread of one model."""

    def __init__(
        self,
        name: str,
        version: str,
        load_runtime: Callable[[], object],
        input_shape: tuple[int, int, int],
        metrics: Metrics,
        *,
        max_batch_size: int = 32,
        max_batch_delay_s: float = 0.002,
        max_queue_images: int = 4096,
        dynamic: bool = True,
        warmup: bool = True,
        postprocess: Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.name, self.version = name, version
        self.postprocess = postprocess
        self._load_runtime = load_runtime
        self.input_shape = tuple(input_shape)
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue_images = max_queue_images
        self.dynamic = dynamic
        self.warmup = warmup
        self.runtime = None
        self.load_error: str | None = None
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._reserved_images = 0  # places held by requests still decoding (see reserve)
        self._cond = threading.Condition()
        self._busy = False
        self._arrival_gap_s = math.inf  # smoothed seconds between arriving images
        self._last_arrival: float | None = None
        self._loaded = threading.Event()
        self._ready = False
        self._draining = False
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name=f"model-{name}-{version}", daemon=True)
        labels = (name, version)
        self._m_wait = metrics.queue_wait.labels(*labels)
        self._m_infer = metrics.inference_duration.labels(*labels)
        self._m_batch = metrics.batch_size.labels(*labels)
        self._m_depth = metrics.queue_images.labels(*labels)
        self._m_ready = metrics.model_ready.labels(*labels)
        self._m_batch_fail = metrics.batch_failures.labels(*labels)
        self._m_image_fail = metrics.image_failures.labels(*labels)
        self._m_ready.set(0)
        self._m_depth.set(0)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready and not self._draining

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @property
    def idle(self) -> bool:
        return not self._queue and not self._busy

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def begin_drain(self) -> None:
        """Refuse new work from now on; queued and running work still finishes."""
        self._draining = True
        self._m_ready.set(0)

    def stop(self, timeout: float | None = None) -> None:
        """Let the worker finish what is queued, then end it (bounded by ``timeout``)."""
        self.begin_drain()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

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

    async def submit(self, images: np.ndarray, deadline: float, reservation: Reservation | None = None) -> BatchOutput:
        """Queue ``images`` (uint8 ``[N,C,H,W]``) and wait for their outputs until ``deadline`` (monotonic).

        With a ``reservation`` (from :meth:`reserve`) the images take its places. While draining, work
        already admitted by the data plane is still taken (it was accepted before the drain began); only
        a stopped worker refuses.
        """
        if self._stopping:
            raise Draining("the server is shutting down")
        if not self._ready:
            raise NotReady(self.load_error or f"model {self.name}/{self.version} is still loading")
        count = len(images)
        loop = asyncio.get_running_loop()
        pending = _Pending(
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
        try:
            # asyncio's clock is the monotonic clock; a timeout context is lighter than wait_for + shield
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await pending.future
        except (TimeoutError, asyncio.CancelledError) as exc:
            self._withdraw(pending)
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(
                    f"deadline passed with {pending.remaining} of {count} images not scored"
                ) from None
            raise

    def _withdraw(self, pending: _Pending) -> None:
        """Drop a request's not-yet-run images from the queue (deadline passed or client gone)."""
        with self._cond:
            pending.cancelled = True
            try:
                self._queue.remove(pending)
            except ValueError:
                return
            self._queued_images -= len(pending.images) - pending.next_index
            self._m_depth.set(self._queued_images)

    # ---- the worker thread -----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self.runtime = self._load_runtime()
            if self.warmup:
                for size in warmup_sizes(self.max_batch_size):
                    self.runtime.run(np.zeros((size, *self.input_shape), dtype=np.uint8))
        except Exception as exc:  # noqa: BLE001 - a model that cannot load must not take the server down
            self.load_error = f"model {self.name}/{self.version} failed to load: {type(exc).__name__}: {exc}"
            log.exception("%s", self.load_error)
            self._loaded.set()
            return
        self._ready = True
        self._m_ready.set(1 if self.ready else 0)
        self._loaded.set()
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
                self._run(parts)

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

    def _take(self) -> list[tuple[_Pending, int, int]]:
        """Pop up to ``max_batch_size`` images from the head of the queue (lock held)."""
        parts: list[tuple[_Pending, int, int]] = []
        taken = 0
        now = time.monotonic()
        while self._queue and taken < self.max_batch_size:
            pending = self._queue[0]
            start = pending.next_index
            stop = min(len(pending.images), start + self.max_batch_size - taken)
            parts.append((pending, start, stop))
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

    def _run(self, parts: list[tuple[_Pending, int, int]]) -> None:
        if len(parts) == 1:
            pending, start, stop = parts[0]
            images = pending.images[start:stop]
        else:
            images = np.concatenate([p.images[a:b] for p, a, b in parts])
        results: list[tuple[int, dict[str, np.ndarray]]] = []
        failures: dict[int, str] = {}
        self._run_range(images, 0, len(images), results, failures)
        # Idle from here on: a request sent in reaction to these answers must find the worker idle, or it
        # would wait for company (and on a loaded machine this thread may be descheduled for a while).
        with self._cond:
            self._busy = bool(self._queue)
        finished: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, BatchOutput]]] = {}
        offset = 0
        for pending, start, stop in parts:
            count = stop - start
            result = self._scatter(pending, start, offset, count, results, failures)
            if result is not None:
                finished.setdefault(pending.loop, []).append((pending.future, result))
            offset += count
        for loop, answers in finished.items():
            try:  # one wake-up of the loop per batch, not one per request
                loop.call_soon_threadsafe(_resolve_all, answers)
            except RuntimeError:  # the loop closed under us (shutdown); nobody is waiting
                pass

    def _run_range(self, images, lo: int, hi: int, results: list, failures: dict[int, str]) -> None:
        """Run ``images[lo:hi]`` (and ``postprocess``); on failure retry each half, down to single images."""
        try:
            began = time.perf_counter()
            out = self.runtime.run(images[lo:hi])
            self._m_infer.observe(time.perf_counter() - began)
            self._m_batch.observe(hi - lo)
            if self.postprocess is not None:
                out = {**out, **self.postprocess(out, images[lo:hi])}
            for key, value in out.items():
                if len(value) != hi - lo:
                    raise RuntimeError(f"output {key} has {len(value)} rows for {hi - lo} images")
            results.append((lo, out))
        except Exception as exc:  # noqa: BLE001 - narrowed down below, reported per image
            self._m_batch_fail.inc()
            release = getattr(self.runtime, "release_memory", None)
            if release is not None:
                try:
                    release()
                except Exception:  # noqa: BLE001
                    log.exception("releasing memory after a failed batch")
            if hi - lo == 1:
                failures[lo] = f"{type(exc).__name__}: {exc}"
                self._m_image_fail.inc()
                log.warning("%s/%s: image failed inference alone: %s", self.name, self.version, failures[lo])
                return
            mid = (lo + hi) // 2
            self._run_range(images, lo, mid, results, failures)
            self._run_range(images, mid, hi, results, failures)

    def _scatter(self, pending: _Pending, start: int, offset: int, count: int, results, failures) -> BatchOutput | None:
        """Copy this request's rows of the batch results into its outputs; its answer once complete."""
        total = len(pending.images)
        if pending.outputs is None and count == total and len(results) == 1 and not failures:
            # the common case, a whole request in one clean batch: views, no copies
            out = results[0][1]
            pending.outputs = {key: value[offset : offset + count] for key, value in out.items()}
        else:
            self._scatter_rows(pending, start, offset, count, results)
        for index, reason in failures.items():
            if offset <= index < offset + count:
                pending.failures[start + index - offset] = reason
        pending.remaining -= count
        if pending.remaining == 0 and not pending.cancelled:
            return BatchOutput(stats=pending.outputs or {}, failures=dict(sorted(pending.failures.items())))
        return None

    @staticmethod
    def _scatter_rows(pending: _Pending, start: int, offset: int, count: int, results) -> None:
        for lo, out in results:
            n = len(next(iter(out.values())))
            a, b = max(lo, offset), min(lo + n, offset + count)
            if a >= b:
                continue
            if pending.outputs is None:
                total = len(pending.images)
                pending.outputs = {
                    k: np.full((total, *v.shape[1:]), np.nan, dtype=v.dtype if v.dtype.kind == "f" else np.float64)
                    for k, v in out.items()
                }
            for key, value in out.items():
                pending.outputs[key][start + a - offset : start + b - offset] = value[a - lo : b - lo]
