"""The guarantees page: a committed report's summary renders back to its committed page, and the targets read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.guarantees_report import MAX_MEDIAN_DELAY, render

REPO = Path(__file__).resolve().parents[2]
REPORTS = [REPO / "docs" / "ood-report", REPO / "models" / "clipart-glow" / "1" / "report"]


@pytest.mark.parametrize("folder", REPORTS, ids=lambda p: p.parent.name if p.name == "report" else p.name)
def test_a_committed_summary_renders_to_its_committed_page(folder):
    summary = json.loads((folder / "guarantees.json").read_text())
    assert render(summary) == (folder / "guarantees.md").read_text()


def test_the_drift_target_follows_the_median_delay():
    summary = json.loads((REPORTS[0] / "guarantees.json").read_text())
    (ten,) = [row for row in summary["drift"] if row["stream"].startswith("10%")]
    ten["delay_median"] = MAX_MEDIAN_DELAY + 1
    line = next(line for line in render(summary).splitlines() if "median delay <=" in line)
    assert f"median delay <= {MAX_MEDIAN_DELAY:,} | no |" in line
