"""The committed bundles' p-values and flags for a few fixed images, pinned to literal values.

Recorded before ``service/ood.py`` was split into modules (issue 11): any reshaping of
the OOD core must leave these numbers as they are. They change only when a bundle is
recalibrated (a new ``calibration.npz``), and then they are recorded again, on purpose:
``clipart-glow`` on 2026-12-03, when its background flow was replaced by one trained on
the second general mix (only ``likelihood_ratio`` and ``combined`` moved; every flag held),
and both later that day, when their graphs were re-exported with ``latent_energy_levels`` and
``dose`` recalibrated with it (only ``dose`` and ``combined`` moved; every flag held).
The images are synthetic and seeded (two uniform-noise images, black, white and a
horizontal ramp), so the test needs no data set; it skips when a bundle is absent.

It also holds the "one decision path" contract: the evaluation report
(``training.evaluation.score_set``) gets exactly the service's p-values for these images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.artifact import load_manifest
from service.calibration_file import load_detector
from service.complexity import complexity_bits
from service.postprocess import make_postprocess
from service.runtimes import build_runtime
from training.evaluation import score_set
from training.ood_sets import ImageSet
from training.scoring import open_bundle

MODELS = Path(__file__).resolve().parents[2] / "models"
ALPHA = 0.05  # both bundles' default alpha

# p-values per score for the images of probe_images(), in order
PINNED = {
    "fashion-glow": {
        "bpd": [0.000199960008, 0.000199960008, 1.0, 0.290941812, 0.216156769],
        "typicality": [0.000333222259, 0.000333222259, 0.00133288904, 0.59446851, 0.462179274],
        "complexity": [0.000399920016, 0.000399920016, 0.00679864027, 0.000199960008, 0.000199960008],
        "orientation": [0.0277944411, 0.00359928014, 0.0145970806, 0.0145970806, 0.0145970806],
        "dose": [0.000333222259, 0.000333222259, 0.000333222259, 0.000333222259, 0.000333222259],
        "combined": [0.000333222259, 0.000333222259, 0.000333222259, 0.000333222259, 0.000333222259],
    },
    "clipart-glow": {
        "bpd": [0.000683526999, 0.000683526999, 0.485987697, 1.0, 0.563226247],
        "typicality": [0.00113895216, 0.00113895216, 0.904328018, 0.10022779, 0.76309795],
        "complexity": [0.010252905, 0.010252905, 0.039644566, 0.301435407, 0.0519480519],
        "likelihood_ratio": [1.0, 0.995898838, 0.000683526999, 0.153110048, 0.0779220779],
        "dose": [0.00113895216, 0.00113895216, 0.00797266515, 0.837129841, 0.0227790433],
        "combined": [0.00113895216, 0.00113895216, 0.00113895216, 0.369020501, 0.0159453303],
    },
}
# the flags at ALPHA per score, written out rather than derived from PINNED so a changed comparison shows
PINNED_FLAGS = {
    "fashion-glow": {
        "bpd": [True, True, False, False, False],
        "typicality": [True, True, True, False, False],
        "complexity": [True, True, True, True, True],
        "orientation": [True, True, True, True, True],
        "dose": [True, True, True, True, True],
        "combined": [True, True, True, True, True],
    },
    "clipart-glow": {
        "bpd": [True, True, False, False, False],
        "typicality": [True, True, False, False, False],
        "complexity": [True, True, True, False, False],
        "likelihood_ratio": [False, False, True, False, False],
        "dose": [True, True, True, False, True],
        "combined": [True, True, True, False, True],
    },
}
DEFAULT_SCORE = {"fashion-glow": "combined", "clipart-glow": "combined"}


def probe_images(shape: tuple[int, ...]) -> np.ndarray:
    """Two seeded noise images, all-black, all-white and a left-to-right ramp: uint8 [5, *shape]."""
    noise = np.random.default_rng(11).integers(0, 256, size=(2, *shape), dtype=np.uint8)
    channels, height, width = shape
    ramp = np.broadcast_to(np.linspace(0, 255, width).astype(np.uint8), (1, channels, height, width))
    black, white = np.zeros((1, *shape), np.uint8), np.full((1, *shape), 255, np.uint8)
    return np.concatenate([noise, black, white, ramp])


@pytest.fixture(scope="module", params=sorted(PINNED))
def bundle(request):
    directory = MODELS / request.param / "1"
    if not (directory / "manifest.json").is_file():
        pytest.skip(f"bundle {directory} is not in this checkout")
    manifest = load_manifest(directory, verify=True)
    images = probe_images(tuple(manifest.input.shape))
    runtime = build_runtime(manifest, directory, "onnx", "cpu", 1)
    try:
        stats = runtime.run(images)
    finally:
        runtime.close()
    return request.param, directory, manifest, images, stats


def test_service_p_values_and_flags_are_pinned(bundle):
    name, directory, manifest, images, stats = bundle
    detector = load_detector(manifest, directory)
    assert detector.default_score == DEFAULT_SCORE[name] and detector.default_alpha == ALPHA
    assert list(detector.score_names) == list(PINNED[name])
    computed = make_postprocess(detector)(stats, images)  # what the model's worker attaches to each batch
    complexity = complexity_bits(images)
    for score, expected in PINNED[name].items():
        np.testing.assert_allclose(computed.p_values[score], expected, rtol=1e-6)
        decisions = detector.decide(stats, complexity, score, ALPHA)
        assert [d.ood for d in decisions] == PINNED_FLAGS[name][score], score
        assert [d.p_value for d in decisions] == pytest.approx(expected, rel=1e-6)
    defaults = detector.decide(stats, complexity, None, None)
    assert {d.score for d in defaults} == {DEFAULT_SCORE[name]}
    assert [d.ood for d in defaults] == PINNED_FLAGS[name][DEFAULT_SCORE[name]]


def test_evaluation_report_gets_the_service_p_values(bundle):
    name, directory, manifest, images, stats = bundle
    detector = load_detector(manifest, directory)
    service = make_postprocess(detector)(stats, images)
    opened = open_bundle(directory, threads=1)
    try:
        scored = score_set(opened, detector, ImageSet("probe", "ood", images, "pinned probe"), "ood", 8, False)
    finally:
        opened.runtime.close()
    assert list(scored.p_values) == list(PINNED[name])
    for score, values in scored.p_values.items():
        np.testing.assert_array_equal(values, service.p_values[score])
