"""The model's stages around a runtime: forward, post-process, what it says of the runtime, memory and closing."""

from __future__ import annotations

from service.pipeline import ModelPipeline, RuntimeInfo

from .fake_model import FakeRuntime, images_with_means, outputs_only


class CarefulRuntime(FakeRuntime):
    """A runtime that reports fallbacks and timings and can give memory back."""

    warnings = ["torchscript: no such file (fell back)"]
    timings = {"onnx/cpu": 0.001}

    def __init__(self) -> None:
        super().__init__()
        self.released = 0

    def release_memory(self) -> None:
        self.released += 1


def test_forward_then_postprocess_and_the_runtime_info():
    runtime = CarefulRuntime()
    pipeline = ModelPipeline(runtime, outputs_only)
    images = images_with_means([2, 8])
    result = pipeline.postprocess(pipeline.forward(images), images)
    assert result.bpd.tolist() == [2, 8] and runtime.batches == [2]
    assert pipeline.runtime_info == RuntimeInfo(
        "fake", "cpu", ("torchscript: no such file (fell back)",), {"onnx/cpu": 0.001}
    )
    pipeline.release_memory()
    pipeline.close()
    assert runtime.released == 1 and runtime.closed


def test_a_plain_runtime_needs_no_memory_care():
    class Plain:
        backend, device = "plain", "cpu"

        def run(self, images):
            return {"bpd": images.reshape(len(images), -1).mean(axis=1)}

    pipeline = ModelPipeline(Plain(), outputs_only)
    pipeline.release_memory()  # nothing to release, nothing raised
    pipeline.close()
    assert pipeline.runtime_info == RuntimeInfo("plain", "cpu", (), None)
