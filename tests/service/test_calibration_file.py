"""The calibration file: a fitted detector survives the bundle round trip bit for bit; a format not read is refused."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from service.artifact import CALIBRATION_FILE, OUTPUT_NAMES, ArtifactError, load_manifest
from service.calibration_file import (
    DetectorInputs,
    calibration_state,
    calibration_summary,
    detector_from_state,
    detector_inputs,
    load_detector,
    save_calibration,
)
from service.errors import ServiceError
from service.metrics import Metrics
from service.ood import Detector
from service.repository import ModelRepository
from service.scores import BACKGROUND_BPD

from .flow_stats import D, make_stats
from .serving import settings


def test_calibration_round_trips_through_the_bundle(tmp_path, tiny_models_root):
    bundle = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle)
    rng = np.random.default_rng(11)
    stats, complexity = make_stats(400, rng)
    stats = {k: v for k, v in stats.items() if k != BACKGROUND_BPD}
    detector = Detector(D, 2, dose_density="gaussian").fit(stats, complexity, seed=3, combined=True)
    detector.default_score = "complexity"
    save_calibration(detector, bundle, load_manifest(bundle), extra={"holdout_sha256": "abc"})

    manifest = load_manifest(bundle)  # verifies calibration.npz's sha256 too
    assert manifest.files["calibration"].path == CALIBRATION_FILE
    assert manifest.calibration["default_score"] == "complexity"
    expected = {"bpd": 400, "typicality": 240, "complexity": 400, "dose": 240, "combined": 240}
    assert manifest.calibration["n_calibration"] == expected
    loaded = load_detector(manifest, bundle)
    assert loaded.score_names == ("bpd", "typicality", "complexity", "dose", "combined")
    assert loaded.default_score == "complexity" and not loaded.needs_background
    new, new_complexity = make_stats(50, rng)
    for name in detector.score_names:
        expected = detector.p_value(new, new_complexity, name)
        np.testing.assert_array_equal(expected, loaded.p_value(new, new_complexity, name))
    summary = calibration_summary(loaded)
    assert summary["calibrated"] and summary["n_holdout"] == 400
    json.dumps(summary)

    with np.load(bundle / CALIBRATION_FILE, allow_pickle=False) as archive:  # plain arrays only
        assert all(archive[key].dtype == np.float64 for key in archive.files)


def test_uncalibrated_bundle_loads_without_flags(tiny_models_root):
    bundle = tiny_models_root / "tiny" / "1"
    detector = load_detector(load_manifest(bundle), bundle)
    assert not detector.fitted and calibration_summary(detector)["calibrated"] is False


@pytest.mark.parametrize("rule", ["max", "sum"])
def test_combined_parts_are_chosen_at_fit_time_and_round_trip(tmp_path, tiny_models_root, rule):
    bundle = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle)
    rng = np.random.default_rng(15)
    stats, complexity = make_stats(400, rng)
    stats = {k: v for k, v in stats.items() if k != BACKGROUND_BPD}
    parts = ("dose", "complexity", "orientation")
    detector = Detector(D, 2, orientation=True, dose_density="gmm")
    detector.fit(stats, complexity, seed=2, combined=True, combined_parts=parts, combine_rule=rule)
    save_calibration(detector, bundle, load_manifest(bundle))

    manifest = load_manifest(bundle)
    assert manifest.calibration["orientation"] is True and manifest.calibration["format"] == 2
    assert manifest.calibration["combined"] == {"parts": list(parts), "rule": rule}
    assert manifest.calibration["dose"]["features"][-1] == "bpd-bpd(vflip)"
    assert "holdout_orientation_mean" in manifest.calibration
    loaded = load_detector(manifest, bundle)
    assert loaded.orientation and loaded.combined_parts == parts and loaded.needs_orientation
    assert loaded.combine_rule == rule
    new, new_complexity = make_stats(50, rng, flip_gap=0.1)
    for name in detector.score_names:
        np.testing.assert_array_equal(
            detector.p_value(new, new_complexity, name), loaded.p_value(new, new_complexity, name)
        )
    summary = calibration_summary(loaded)
    assert summary["orientation"] is True and summary["combined_parts"] == list(parts)
    assert summary["combined_rule"] == rule
    json.dumps(summary)


def test_a_calibration_in_a_format_not_read_is_refused_by_name():
    rng = np.random.default_rng(16)
    stats, complexity = make_stats(300, rng)
    summary, arrays = calibration_state(Detector(D, 2).fit(stats, complexity, seed=0, combined=True))
    for key in ("orientation", "combined"):
        del summary[key]
    summary["format"] = 1  # what format 1 wrote: no orientation, no combined parts
    with pytest.raises(ArtifactError, match=r"format 1; this oodgate reads 'split-conformal' formats \[2\]"):
        detector_from_state(D, 2, summary, arrays)
    summary["format"] = 3
    with pytest.raises(ArtifactError, match="format 3"):
        detector_from_state(D, 2, summary, arrays)
    summary["format"] = 2  # a format-2 summary without the parts its combined score was built from
    with pytest.raises(ArtifactError, match="combined.parts"):
        detector_from_state(D, 2, summary, arrays)


def test_the_service_refuses_a_bundle_whose_calibration_it_cannot_read_and_says_why(tmp_path, calibrated_models_root):
    shutil.copytree(calibrated_models_root / "tiny", tmp_path / "tiny")
    shutil.copytree(calibrated_models_root / "tiny", tmp_path / "old")
    manifest_path = tmp_path / "old" / "1" / "manifest.json"  # not among the hashed files
    manifest = json.loads(manifest_path.read_text())
    manifest["name"], manifest["calibration"]["format"] = "old", 1
    manifest_path.write_text(json.dumps(manifest))
    repo = ModelRepository(settings(tmp_path), Metrics(process=False))
    repo.load()
    assert [key for key in repo.entries] == [("tiny", "1")]  # the readable bundle still serves
    assert "format 1" in repo.errors["old/1"] and "oodgate-calibrate" in repo.errors["old/1"]
    (row,) = [row for row in repo.index() if row["name"] == "old"]
    assert row["state"] == "UNAVAILABLE" and "format 1" in row["reason"]
    with pytest.raises(ServiceError) as refused:
        asyncio.run(repo.load_model("old"))
    assert refused.value.status == 400 and "format 1" in refused.value.message


def test_latent_energy_round_trips_and_a_graph_without_it_is_refused(tmp_path, tiny_models_root):
    bundle = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle)
    rng = np.random.default_rng(21)
    stats, complexity = make_stats(400, rng)
    detector = Detector(D, 2, latent_energy=True, dose_density="gaussian").fit(stats, complexity, seed=3)
    save_calibration(detector, bundle, load_manifest(bundle))
    manifest = load_manifest(bundle)
    assert manifest.calibration["latent_energy"] is True
    assert manifest.calibration["dose"]["features"][-2:] == ["latent_energy_level1", "latent_energy_level2"]
    loaded = load_detector(manifest, bundle)
    assert loaded.latent_energy and calibration_summary(loaded)["latent_energy"] is True
    assert detector_inputs(manifest.calibration) == DetectorInputs(
        background=False, orientation=False, latent_energy=True
    )
    new, new_complexity = make_stats(50, rng)
    np.testing.assert_array_equal(
        detector.p_value(new, new_complexity, "dose"), loaded.p_value(new, new_complexity, "dose")
    )

    # a graph exported before the output existed (its manifest lists the six shown outputs only): fail closed
    old_graph = manifest.model_copy(update={"outputs": list(OUTPUT_NAMES)})
    with pytest.raises(ArtifactError, match="latent_energy_levels"):
        load_detector(old_graph, bundle)
    # a calibration made before the key existed reads as without it
    summary = dict(manifest.calibration)
    del summary["latent_energy"]
    assert not detector_inputs(summary).latent_energy
