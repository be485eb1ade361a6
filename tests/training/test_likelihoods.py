"""oodgate-likelihoods on any bundle: its recorded data's slices, or a one-line reason, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from service.artifact import load_manifest, write_manifest
from tests.conftest import RGB8
from tests.training.recorded import SLICES, recorded_bundle
from training.likelihoods import main
from training.scoring import open_bundle, run_statistics


@pytest.mark.filterwarnings("ignore:Creating legend with loc=.best.")  # matplotlib on 200+ values: harmless
def test_likelihoods_of_a_non_fashion_bundle_are_its_own_slices(tmp_path, mixed_models_root, capsys):
    bundle = recorded_bundle(tmp_path, mixed_models_root, "rgb8", RGB8)
    assert main([str(bundle), "--no-progress", "--train-images", "50", "--figure", str(tmp_path / "f.png")]) == 0
    table = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()}
    train = np.load(tmp_path / "train.npz")["images"]
    expected = {
        "rgb8-train": train[: SLICES["train"][1]][:50],
        "rgb8-holdout": train[slice(*SLICES["holdout"])],
        "rgb8-test": np.load(tmp_path / "test.npz")["images"],
    }
    runtime = open_bundle(bundle, threads=1)
    for name, images in expected.items():
        row = table[name]
        assert int(row[1]) == len(images)
        assert float(row[2]) == round(float(run_statistics(runtime, images, progress=False)["bpd"].mean()), 3)
    assert (tmp_path / "f.png").stat().st_size > 0
    assert not any(name.startswith(("FashionMNIST", "MNIST")) for name in table)

    (tmp_path / "train.npz").unlink()  # the recorded data is gone: say so
    assert main([str(bundle), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "npz data at" in err and "cannot be read here" in err and "Traceback" not in err

    manifest = load_manifest(bundle)
    manifest.data = None
    write_manifest(bundle, manifest)
    assert main([str(bundle), "--no-progress"]) == 2
    assert "records no training data" in capsys.readouterr().err
