"""The dynamic batcher, in-process and through HTTP: order, splitting, merging, backpressure, deadlines, halving."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from service.batcher import Batcher, DeadlineExceeded, NotReady, QueueFull
from service.metrics import Metrics
from service.worker import ModelWorker

from .fake_model import FakeRuntime, images_with_means, later, make_worker, wait_for
from .serving import LiveServer, controlled_app, multipart_files, random_images, reference_stats


def make_batcher(runtime, **kwargs) -> ModelWorker:
    """A worker serving ``runtime`` through a batcher, ready; tests drive its ``batcher``."""
    worker = make_worker(runtime, **kwargs)
    assert worker.wait_loaded(10) and worker.ready
    return worker


def test_a_big_request_is_split_and_reassembled_in_order():
    runtime = FakeRuntime()
    worker = make_batcher(runtime)
    batcher = worker.batcher
    means = list(range(10, 20))
    out = asyncio.run(batcher.submit(images_with_means(means), later()))
    assert runtime.batches == [4, 4, 2]
    assert out.result.outputs["bpd"].tolist() == means and out.failures == {}
    assert out.result.outputs["log_pz_levels"][:, 1].tolist() == [-m for m in means]
    worker.stop(5)


def test_concurrent_requests_share_batches_and_keep_their_own_answers():
    runtime = FakeRuntime()
    worker = make_batcher(runtime)
    batcher = worker.batcher

    async def scenario():
        runtime.gate.clear()
        first = asyncio.create_task(batcher.submit(images_with_means([1]), later()))
        await asyncio.to_thread(runtime.entered.wait, 10)  # the lone request went to the idle worker at once
        others = [asyncio.create_task(batcher.submit(images_with_means([m, m + 1]), later())) for m in (10, 20, 30)]
        await wait_for(lambda: batcher.queued_images == 6)
        runtime.gate.set()
        return await first, await asyncio.gather(*others)

    first, others = asyncio.run(scenario())
    assert runtime.batches == [1, 4, 2]  # 6 queued images: one full batch, then the rest
    assert first.result.outputs["bpd"].tolist() == [1]
    assert [o.result.outputs["bpd"].tolist() for o in others] == [[10, 11], [20, 21], [30, 31]]
    worker.stop(5)


def test_batching_disabled_never_mixes_requests():
    runtime = FakeRuntime()
    worker = make_batcher(runtime, dynamic=False)
    batcher = worker.batcher

    async def scenario():
        runtime.gate.clear()
        first = asyncio.create_task(batcher.submit(images_with_means([1]), later()))
        await asyncio.to_thread(runtime.entered.wait, 10)
        others = [asyncio.create_task(batcher.submit(images_with_means([m]), later())) for m in (2, 3, 4)]
        await wait_for(lambda: batcher.queued_images == 3)
        runtime.gate.set()
        await asyncio.gather(first, *others)

    asyncio.run(scenario())
    assert runtime.batches == [1, 1, 1, 1]
    worker.stop(5)


def test_a_lone_request_does_not_wait_for_company():
    """With an hour of batch delay, a lone request still runs: it reached an idle worker and an empty queue."""
    runtime = FakeRuntime()
    worker = make_batcher(runtime, max_batch_delay_s=3600.0)
    batcher = worker.batcher
    out = asyncio.run(batcher.submit(images_with_means([5]), later(20)))
    assert out.result.outputs["bpd"].tolist() == [5] and runtime.batches == [1]
    worker.stop(5)


def test_images_queued_behind_a_busy_worker_wait_at_most_the_delay():
    runtime = FakeRuntime()
    worker = make_batcher(runtime, max_batch_delay_s=0.05)
    batcher = worker.batcher

    async def scenario():
        runtime.gate.clear()
        first = asyncio.create_task(batcher.submit(images_with_means([1]), later()))
        await asyncio.to_thread(runtime.entered.wait, 10)
        second = asyncio.create_task(batcher.submit(images_with_means([2]), later()))
        await wait_for(lambda: batcher.queued_images == 1)
        runtime.gate.set()
        return await first, await second  # the second is alone once the worker frees up: it runs after the delay

    first, second = asyncio.run(scenario())
    assert runtime.batches == [1, 1] and second.result.outputs["bpd"].tolist() == [2]
    worker.stop(5)


def test_a_free_worker_waits_for_company_only_when_some_is_expected():
    """Company expected (recent gaps far below the delay): the worker waits and the next images join.
    Nobody expected (gaps longer than the delay): the queued request runs at once, not after 5 s."""

    async def scenario(gap_s: float, more: list[int] | None):
        runtime = FakeRuntime()
        worker = make_batcher(runtime, max_batch_delay_s=5.0)
        batcher = worker.batcher
        runtime.gate.clear()
        first = asyncio.create_task(batcher.submit(images_with_means([1]), later()))
        await asyncio.to_thread(runtime.entered.wait, 10)
        second = asyncio.create_task(batcher.submit(images_with_means([2]), later()))
        await wait_for(lambda: batcher.queued_images == 1)
        batcher._arrival_gap_s = gap_s  # the arrival history this case stands for
        runtime.gate.set()
        await first
        tasks = [second]
        if more is not None:
            await asyncio.sleep(0.05)
            tasks.append(asyncio.create_task(batcher.submit(images_with_means(more), later())))
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=2.5)
        worker.stop(5)
        return runtime.batches, results

    batches, results = asyncio.run(scenario(0.001, [3, 4, 5]))
    assert batches == [1, 4]  # the second waited, and the next request filled its batch
    assert [r.result.outputs["bpd"].tolist() for r in results] == [[2], [3, 4, 5]]
    batches, results = asyncio.run(scenario(10.0, None))
    assert batches == [1, 1] and results[0].result.outputs["bpd"].tolist() == [2]


def test_a_full_queue_refuses_at_once():
    runtime = FakeRuntime()
    worker = make_batcher(runtime, max_queue_images=4)
    batcher = worker.batcher

    async def scenario():
        runtime.gate.clear()
        running = asyncio.create_task(batcher.submit(images_with_means([1]), later()))
        await asyncio.to_thread(runtime.entered.wait, 10)
        queued = asyncio.create_task(batcher.submit(images_with_means([2, 3, 4]), later()))
        await wait_for(lambda: batcher.queued_images == 3)
        with pytest.raises(QueueFull):
            await batcher.submit(images_with_means([5, 6]), later())
        fits = asyncio.create_task(batcher.submit(images_with_means([7]), later()))
        await wait_for(lambda: batcher.queued_images == 4)
        runtime.gate.set()
        return await asyncio.gather(running, queued, fits)

    results = asyncio.run(scenario())
    assert [r.result.outputs["bpd"].tolist() for r in results] == [[1], [2, 3, 4], [7]]
    worker.stop(5)


async def leave_by_deadline(batcher) -> None:
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(images_with_means([2, 3, 4]), time.monotonic() + 0.05)


async def leave_by_disconnect(batcher) -> None:
    gone = asyncio.create_task(batcher.submit(images_with_means([2, 3, 4]), later()))
    await wait_for(lambda: batcher.queued_images == 3)
    gone.cancel()  # what the server does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await gone


@pytest.mark.parametrize("leave", [leave_by_deadline, leave_by_disconnect], ids=["deadline", "client_gone"])
def test_a_request_that_leaves_takes_its_images_out_of_the_queue_unrun(leave):
    runtime = FakeRuntime()
    worker = make_batcher(runtime)
    batcher = worker.batcher

    async def scenario():
        runtime.gate.clear()
        running = asyncio.create_task(batcher.submit(images_with_means([1]), later()))
        await asyncio.to_thread(runtime.entered.wait, 10)
        await leave(batcher)  # queued behind the busy worker, then gone
        assert batcher.queued_images == 0
        runtime.gate.set()
        first = await running
        return first, await batcher.submit(images_with_means([9]), later())

    first, last = asyncio.run(scenario())
    assert first.result.outputs["bpd"].tolist() == [1] and last.result.outputs["bpd"].tolist() == [9]
    assert runtime.batches == [1, 1]  # the 3 images of the request that left never ran
    worker.stop(5)


def test_reserved_places_count_against_the_bound_until_submitted_or_released():
    runtime = FakeRuntime()
    worker = make_batcher(runtime, max_queue_images=4)
    batcher = worker.batcher
    try:
        places = batcher.reserve(3)
        with pytest.raises(QueueFull):
            batcher.reserve(2)  # 3 held + 2 > 4, though nothing is queued yet
        with batcher.reserve(1):
            pass  # released on leaving
        out = asyncio.run(batcher.submit(images_with_means([1, 2, 3]), later(), places))
        assert out.result.outputs["bpd"].tolist() == [1, 2, 3] and not places.held
        places.release()  # a second release (after submit took the places) changes nothing
        with batcher.reserve(4):
            pass  # every place is free again
    finally:
        worker.stop(1)


# ---- the same behaviour seen through HTTP -----------------------------------------------------------


@pytest.fixture(scope="module")
def controlled(tiny_models_root):
    app, runtimes = controlled_app(
        tiny_models_root, max_batch_size=4, max_queue_images=4, max_images_per_request=4, retry_after_s=2
    )
    with LiveServer(app) as live:
        yield live, runtimes[0]


def post_async(url: str, files, results: list, **params) -> threading.Thread:
    def go():
        results.append(httpx.post(f"{url}/score", files=files, params=params, timeout=30))

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def queued(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("oodgate_queue_images{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_http_backpressure_503_and_deadline_504(controlled):
    server, runtime = controlled
    url = server.url
    runtime.gate.clear()
    runtime.entered.clear()
    runtime.batches.clear()
    results: list[httpx.Response] = []
    try:
        first = post_async(url, multipart_files(random_images(1, seed=1)), results)
        assert runtime.entered.wait(10)
        late = httpx.post(f"{url}/score", files=multipart_files(random_images(2, seed=2)), params={"timeout_ms": 200})
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        filler = post_async(url, multipart_files(random_images(4, seed=3)), results)
        end = time.monotonic() + 10
        while queued(url) < 4 and time.monotonic() < end:
            time.sleep(0.01)
        refused = httpx.post(f"{url}/score", files=multipart_files(random_images(1, seed=4)))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "queue_full"
        # admission comes before decoding: bytes that are no image are refused for the full queue, not decoded
        undecoded = httpx.post(f"{url}/score", files=[("files", ("x.png", b"no image at all", "image/png"))])
        assert undecoded.status_code == 503 and undecoded.json()["error"]["code"] == "queue_full"
    finally:
        runtime.gate.set()
    first.join(30)
    filler.join(30)
    assert sorted(r.status_code for r in results) == [200, 200]
    assert runtime.batches == [1, 4]  # the 504's two images were dropped, never run
    text = httpx.get(f"{url}/metrics").text
    assert 'oodgate_rejections_total{model="tiny",reason="queue_full",version="1"} 2.0' in text
    assert 'oodgate_rejections_total{model="tiny",reason="deadline",version="1"} 1.0' in text


def test_http_poisoned_image_gets_500_and_the_others_their_answers(controlled, tiny_models_root):
    server, _ = controlled
    images = random_images(4, seed=5)
    images[1] = 255
    response = httpx.post(f"{server.url}/score", files=multipart_files(images))
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["code"] == "inference_failed" and body["error"]["index"] == 1
    assert "poisoned" in body["error"]["message"]
    results = body["results"]
    assert results[1] == {"error": {"code": "inference_failed", "message": results[1]["error"]["message"], "index": 1}}
    expected = reference_stats(tiny_models_root, images[[0, 2, 3]])["bpd"]
    assert [results[i]["bpd"] for i in (0, 2, 3)] == pytest.approx(expected.tolist(), rel=1e-5)
    ok = httpx.post(f"{server.url}/score", files=multipart_files(random_images(2, seed=6)))
    assert ok.status_code == 200  # the server keeps serving
    alone = np.full((1, *images.shape[1:]), 255, np.uint8)  # every image of the request fails
    response = httpx.post(f"{server.url}/score", files=multipart_files(alone))
    assert response.status_code == 500 and response.json()["error"]["code"] == "inference_failed"
    assert response.json()["results"][0]["error"]["index"] == 0


def test_the_queue_publishes_its_bound():
    """The bound the queue alert divides by is set where the queue is (moved from the drift tracker's test)."""
    metrics = Metrics(process=False)
    Batcher("m", "1", metrics, max_batch_size=4, max_batch_delay_s=0.0, max_queue_images=64)
    assert metrics.registry.get_sample_value("oodgate_queue_capacity_images", {"model": "m", "version": "1"}) == 64


def test_a_queue_whose_worker_never_opens_refuses_with_the_reason():
    batcher = Batcher("m", "1", Metrics(process=False), max_batch_size=4, max_batch_delay_s=0.0, max_queue_images=64)
    with pytest.raises(NotReady, match="still loading"):
        asyncio.run(batcher.submit(images_with_means([1]), later()))
    batcher.refuse("model m/1 failed to load: boom")
    with pytest.raises(NotReady, match="boom"):
        asyncio.run(batcher.submit(images_with_means([1]), later()))
