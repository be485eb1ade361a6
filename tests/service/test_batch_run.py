"""One batch's run: retry by halves down to the images that fail alone, and the scatter of rows to requests."""

from __future__ import annotations

import asyncio

import numpy as np

from service.batch_result import BatchResult
from service.batch_run import Piece, join
from service.metrics import Metrics

from .fake_model import FakeRuntime, images_with_means, later, make_worker


def test_a_failing_batch_is_retried_in_halves_and_only_poisoned_images_fail():
    runtime = FakeRuntime()
    metrics = Metrics(process=False)
    worker = make_worker(runtime, metrics, max_batch_size=8, max_batch_delay_s=0.002, max_queue_images=4096)
    batcher = worker.batcher
    worker.wait_loaded(10)
    means = [10, 11, 255, 13, 14, 255, 16, 17]
    out = asyncio.run(batcher.submit(images_with_means(means), later()))
    assert sorted(out.failures) == [2, 5] and "poisoned image" in out.failures[2]
    good = [i for i in range(8) if i not in (2, 5)]
    assert out.result.outputs["bpd"][good].tolist() == [means[i] for i in good]
    assert np.isnan(out.result.outputs["bpd"][[2, 5]]).all()
    assert metrics.image_failures.labels("fake", "1")._value.get() == 2
    # the worker survives and keeps serving
    assert asyncio.run(batcher.submit(images_with_means([3]), later())).result.outputs["bpd"].tolist() == [3]
    worker.stop(5)


def test_a_whole_request_in_one_clean_batch_is_that_batch_itself():
    batch = BatchResult({"bpd": np.arange(3.0)})
    assert join([Piece(0, batch)], 3) is batch  # no copy in the common case
    assert join([], 3) is None  # every image failed
    joined = join([Piece(0, batch.rows(0, 1)), Piece(2, batch.rows(2, 3))], 3)
    assert joined.outputs["bpd"][[0, 2]].tolist() == [0.0, 2.0] and np.isnan(joined.outputs["bpd"][1])
