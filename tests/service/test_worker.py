"""The model worker's lifecycle: warm-up before readiness, a load that fails, the runtime closed at the end."""

from __future__ import annotations

import asyncio

from service.metrics import Metrics
from service.worker import warmup_sizes

from .fake_model import FakeRuntime, images_with_means, later, make_worker


def test_warmup_buckets_and_readiness():
    assert (
        warmup_sizes(1) == [1] and warmup_sizes(32) == [1, 2, 4, 8, 16, 32] and warmup_sizes(24) == [1, 2, 4, 8, 16, 24]
    )
    runtime = FakeRuntime()
    runtime.gate.clear()
    worker = make_worker(runtime, max_batch_size=6, max_batch_delay_s=0.002, max_queue_images=4096, warmup=True)
    assert runtime.entered.wait(10) and not worker.ready  # not ready while warming up
    runtime.gate.set()
    worker.wait_loaded(10)
    assert worker.ready and runtime.batches == [1, 2, 4, 6]
    worker.stop(5)


def test_a_model_that_fails_to_load_is_not_ready_and_says_why():
    def broken():
        raise FileNotFoundError("model.onnx is gone")

    worker = make_worker(broken, max_batch_size=32, max_batch_delay_s=0.002, max_queue_images=4096)
    worker.wait_loaded(10)
    assert not worker.ready and "model.onnx is gone" in worker.load_error
    worker.stop(1)


def test_ready_and_runtime_info_then_drain_and_close():
    runtime = FakeRuntime()
    metrics = Metrics(process=False)
    worker = make_worker(runtime, metrics)
    assert worker.wait_loaded(10) and worker.ready
    assert (worker.runtime_info.backend, worker.runtime_info.device) == ("fake", "cpu")
    ready = {"model": "fake", "version": "1"}
    assert metrics.registry.get_sample_value("oodgate_model_ready", ready) == 1
    out = asyncio.run(worker.batcher.submit(images_with_means([4, 6]), later()))
    assert out.result.outputs["bpd"].tolist() == [4, 6]
    worker.begin_drain()
    assert not worker.ready and metrics.registry.get_sample_value("oodgate_model_ready", ready) == 0
    worker.stop(5)
    assert runtime.closed  # finalize: nothing runs on the runtime any more
