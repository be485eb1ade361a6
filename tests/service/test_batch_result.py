"""The typed batch result: columns picked from a runtime's stats, sliced as views, gathered with NaN gaps."""

from __future__ import annotations

import numpy as np
import pytest

from service.artifact import OUTPUT_NAMES
from service.batch_result import BatchResult
from service.scores import VFLIP_BPD


def stats(n: int) -> dict[str, np.ndarray]:
    columns = {name: np.arange(n, dtype=np.float32) + i for i, name in enumerate(OUTPUT_NAMES)}
    return {**columns, VFLIP_BPD: np.zeros(n, np.float32)}


def test_from_stats_keeps_the_graph_outputs_and_drops_the_extra_passes():
    result = BatchResult.from_stats(stats(3), {"bpd": np.ones(3)}, {"bpd": np.full(3, 0.5)})
    assert list(result.outputs) == list(OUTPUT_NAMES) and len(result) == 3
    assert result.bpd.tolist() == [3.0, 4.0, 5.0]  # bpd is the fourth output
    assert result.scores["bpd"].tolist() == [1, 1, 1] and result.p_values["bpd"].tolist() == [0.5] * 3


def test_rows_are_views_of_every_column():
    result = BatchResult.from_stats(stats(4), {"dose": np.arange(4.0)}, {"dose": np.linspace(0.1, 0.4, 4)})
    part = result.rows(1, 3)
    assert len(part) == 2 and part.scores["dose"].tolist() == [1.0, 2.0]
    assert part.p_values["dose"].tolist() == pytest.approx([0.2, 0.3])
    assert np.shares_memory(part.outputs["bpd"], result.outputs["bpd"])


def test_gather_places_pieces_and_leaves_nan_between():
    a = BatchResult({"bpd": np.array([1.0, 2.0]), "n": np.array([7, 8])}, {"s": np.array([0.1, 0.2])})
    b = BatchResult({"bpd": np.array([5.0]), "n": np.array([9])}, {"s": np.array([0.5])})
    whole = BatchResult.gather([(0, a), (3, b)], 4)
    assert whole.outputs["bpd"][[0, 1, 3]].tolist() == [1.0, 2.0, 5.0] and np.isnan(whole.outputs["bpd"][2])
    assert whole.outputs["n"].dtype == np.float64 and np.isnan(whole.outputs["n"][2])  # ints widen to hold NaN
    assert whole.scores["s"][[0, 1, 3]].tolist() == [0.1, 0.2, 0.5] and whole.p_values == {}


def test_unscored_has_the_usual_shapes_and_check_rows_catches_a_short_column():
    empty = BatchResult.unscored(2, levels=3)
    assert set(empty.outputs) == set(OUTPUT_NAMES) and empty.outputs["log_pz_levels"].shape == (2, 3)
    assert np.isnan(empty.bpd).all()
    short = BatchResult({"bpd": np.zeros(2)}, {"dose": np.zeros(1)})
    with pytest.raises(RuntimeError, match="dose has 1 rows for 2 images"):
        short.check_rows(2)
