"""The typed result of one batch (and of one request's share of it): what the model's pipeline hands the data plane.

Why a type and not a dict: the worker's post-processing used to join the
graph's outputs, the runtime's extra passes and every score and p-value in one
``dict[str, ndarray]`` under composed keys (``"score/dose"``), and every reader
had to know how the keys were spelled. Here each kind of column has its field:

- ``outputs``: the graph's outputs, keyed by :data:`service.artifact.OUTPUT_NAMES`
  (what responses show per image);
- ``scores``: every score the model offers, keyed by :data:`service.scores.SCORE_NAMES`,
  in that order;
- ``p_values``: each score's split-conformal p-value, same keys; empty for an
  uncalibrated model (which never gets a made-up flag).

The runtime's extra passes (``background_bpd``, ``vflip_bpd``) are inputs of the
scores and end with the post-processing: nothing after it reads them.

Everything is whole arrays, batch-first: the batcher slices a batch into
requests with :meth:`BatchResult.rows` and joins a request split across
batches with :meth:`BatchResult.gather`, both per column, never per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .artifact import LEVEL_OUTPUTS, OUTPUT_NAMES, SCALAR_OUTPUTS

Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Per-image columns of one batch or one request, all with the same number of rows."""

    outputs: Columns
    scores: Columns = field(default_factory=dict)
    p_values: Columns = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: Columns, scores: Columns, p_values: Columns) -> BatchResult:
        """The graph's outputs picked from a runtime's stats (which also carry its extra passes)."""
        return cls({name: stats[name] for name in OUTPUT_NAMES}, scores, p_values)

    @classmethod
    def unscored(cls, count: int, levels: int) -> BatchResult:
        """NaN outputs for ``count`` images that all failed inference, so every consumer sees the usual shapes."""
        outputs = {name: np.full(count, np.nan) for name in SCALAR_OUTPUTS}
        outputs.update({name: np.full((count, levels), np.nan) for name in LEVEL_OUTPUTS})
        return cls(outputs)

    def __len__(self) -> int:
        return len(next(iter(self.outputs.values())))

    def check_rows(self, count: int) -> None:
        """Raise when a column does not have ``count`` rows (a graph that dropped or added images)."""
        for group in (self.outputs, self.scores, self.p_values):
            for name, values in group.items():
                if len(values) != count:
                    raise RuntimeError(f"output {name} has {len(values)} rows for {count} images")

    @property
    def bpd(self) -> np.ndarray:
        return self.outputs["bpd"]

    def rows(self, start: int, stop: int) -> BatchResult:
        """Rows ``start:stop`` as views (no copy)."""
        return BatchResult(
            {name: values[start:stop] for name, values in self.outputs.items()},
            {name: values[start:stop] for name, values in self.scores.items()},
            {name: values[start:stop] for name, values in self.p_values.items()},
        )

    @classmethod
    def gather(cls, pieces: Sequence[tuple[int, BatchResult]], total: int) -> BatchResult:
        """One result of ``total`` rows from (first row, rows) pieces; rows no piece covers are NaN."""
        return cls(
            _gather_columns([(at, rows.outputs) for at, rows in pieces], total),
            _gather_columns([(at, rows.scores) for at, rows in pieces], total),
            _gather_columns([(at, rows.p_values) for at, rows in pieces], total),
        )


def _gather_columns(pieces: list[tuple[int, Columns]], total: int) -> dict[str, np.ndarray]:
    """Columns of ``total`` rows filled from each piece's columns at its offset (NaN elsewhere; floats kept)."""
    first = pieces[0][1]
    gathered = {
        name: np.full(
            (total, *values.shape[1:]), np.nan, dtype=values.dtype if values.dtype.kind == "f" else np.float64
        )
        for name, values in first.items()
    }
    for at, columns in pieces:
        for name, values in columns.items():
            gathered[name][at : at + len(values)] = values
    return gathered
