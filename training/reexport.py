"""``python -m training.reexport BUNDLE_DIR``: rewrite a bundle's graphs from its own ``weights.npz``.

Why: a graph carries the outputs of the export code that wrote it. A bundle
exported before ``latent_energy_levels`` was added (see
:data:`service.artifact.GRAPH_OUTPUTS`) cannot feed that ``dose`` feature; its
weights can, without retraining. This rebuilds the eager flow from the
bundle's weights, writes ``model.pt`` and ``model.onnx`` again through the same
:func:`training.export.write_graphs` as every export (parity checked), and only
then updates the manifest: its ``outputs``, the graphs' sha256 and the parity
record. The six shown outputs keep their values (the parity check compares the
new graphs with the same eager flow the old ones came from), so the bundle's
calibration stays valid; re-calibrate to use the new output.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from service.artifact import (
    GRAPH_KEYS,
    GRAPH_OUTPUTS,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    ArtifactError,
    file_entry,
    load_manifest,
    write_manifest,
)
from service.runtimes import OnnxGraph
from training.calibrate import load_holdout
from training.export import ExportParityError, write_graphs
from training.weights import flow_from_bundle

# the old graph and the new one must agree this closely on every shown output (float32 arithmetic)
SAME_OUTPUTS_TOLERANCE = 1e-4


def reexport(bundle_dir: Path, real_images: np.ndarray | None = None) -> dict:
    """Rewrite the graphs, check the shown outputs did not move, update the manifest; returns the parity report."""
    manifest = load_manifest(bundle_dir)
    flow = flow_from_bundle(bundle_dir)
    if real_images is None and manifest.data is not None and manifest.data.holdout_sha256:
        real_images = load_holdout(manifest)  # parity on real images too, as at the first export
    # where the manifest lists the graphs (export writes ONNX_FILE and TORCHSCRIPT_FILE; a manifest may name others)
    targets = {
        GRAPH_KEYS[backend]: (staged_name, manifest.files[GRAPH_KEYS[backend]].path)
        for backend, staged_name in (("onnx", ONNX_FILE), ("torchscript", TORCHSCRIPT_FILE))
        if GRAPH_KEYS[backend] in manifest.files
    }
    if GRAPH_KEYS["onnx"] not in targets:
        raise ArtifactError(f"{bundle_dir}: the manifest lists no ONNX graph to rewrite")
    with tempfile.TemporaryDirectory(dir=bundle_dir) as staging:
        staged = Path(staging)
        parity = write_graphs(flow, staged, real_images)
        probe = np.random.default_rng(0).integers(0, 256, size=(16, *manifest.input.shape), dtype=np.uint8)
        # the service's own ONNX runtime, which reads an old graph's outputs by name as it does a new one's
        old = OnnxGraph(bundle_dir / targets[GRAPH_KEYS["onnx"]][1], "cpu", 0)(probe)
        new = OnnxGraph(staged / ONNX_FILE, "cpu", 0)(probe)
        for name, before in old.items():
            delta = float(np.max(np.abs(np.asarray(before, np.float64) - np.asarray(new[name], np.float64))))
            if not delta <= SAME_OUTPUTS_TOLERANCE * max(1.0, float(np.max(np.abs(before)))):
                raise ExportParityError(f"{name} moved by {delta:.3g} between the old graph and the new one")
        # from here until the manifest is written the graphs' sha256 disagree with it: a load fails closed
        for staged_name, listed in targets.values():
            (staged / staged_name).replace(bundle_dir / listed)
    files = dict(manifest.files)
    for key, (_, listed) in targets.items():
        files[key] = file_entry(bundle_dir, listed)
    training = {**manifest.training, "export_parity": parity}
    write_manifest(
        bundle_dir, manifest.model_copy(update={"outputs": list(GRAPH_OUTPUTS), "files": files, "training": training})
    )
    return parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.reexport", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="+", help="models/<name>/<version>/ (each carries weights.npz)")
    args = parser.parse_args(argv)
    for bundle in args.bundle:
        try:
            parity = reexport(Path(bundle))
        except (ArtifactError, ExportParityError) as exc:
            print(f"reexport: {bundle}: {exc}", file=sys.stderr)
            return 2
        print(f"{bundle}: graphs rewritten with outputs {list(GRAPH_OUTPUTS)}; parity {parity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
