"""The report's wording for what the model was trained against."""

from __future__ import annotations

from training.report import negative_training_line


def test_report_says_when_an_ood_transform_was_trained_against():
    line = negative_training_line({"negative": {"transform": "vflip", "margin_bpd": 0.3, "weight": 1.0}})
    assert "`vflip` set" in line and "not zero-shot" in line and "0.3 bits/dim" in line
