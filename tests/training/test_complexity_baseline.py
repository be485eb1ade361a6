"""The no-flow baseline: PNG size ranks noise above flat images and cannot tell identical images apart."""

import json
from dataclasses import asdict

import numpy as np

from training.colour_sets import INDEX_NAME, SetRecord, images_sha256
from training.complexity_baseline import baseline_rows, main


def write_index(sets_dir, sets):
    sets_dir.mkdir()
    rows = []
    for name, images in sets.items():
        np.savez(sets_dir / f"{name}.npz", images=images)
        record = SetRecord(name, "far", "tune", name, "none", len(images), images_sha256(images), f"{name}.npz")
        rows.append(asdict(record))
    (sets_dir / INDEX_NAME).write_text(json.dumps({"sets": rows}))  # as training.colour_sets.write_sets writes it


def test_noise_is_separated_and_a_copy_of_the_test_split_is_not(tmp_path, capsys):
    rng = np.random.default_rng(0)
    flat = np.repeat(rng.integers(0, 256, (20, 3, 1, 1), dtype=np.uint8), 64, axis=2).reshape(20, 3, 8, 8)
    noise = rng.integers(0, 256, (15, 3, 8, 8), dtype=np.uint8)
    write_index(tmp_path / "sets", {"noise": noise, "same": flat.copy()})

    in_bpd, rows = baseline_rows(tmp_path / "sets", flat)
    by_name = {row.name: row for row in rows}
    assert by_name["noise"].auroc_more_bits == 1.0 and by_name["noise"].auroc_two_sided == 1.0
    assert by_name["noise"].fpr95_more_bits == 0.0 and by_name["noise"].bits_per_dim > 8 > in_bpd
    assert by_name["same"].auroc_more_bits == 0.5 and by_name["same"].count == 20

    np.savez(tmp_path / "test.npz", images=flat)
    assert main([str(tmp_path / "sets"), "--in-dist", str(tmp_path / "test.npz")]) == 0
    table = capsys.readouterr().out
    assert "| noise | far | tune | 15 |" in table and "| 1.000 | 1.000 | 0.000 |" in table
    assert main([str(tmp_path / "nowhere"), "--in-dist", str(tmp_path / "test.npz")]) == 2
