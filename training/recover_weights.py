"""``python -m training.recover_weights BUNDLE``: rebuild ``weights.npz`` from a bundle's ``model.onnx``.

For bundles exported before export wrote ``weights.npz``, whose training
checkpoint is gone. Most parameters sit in the ONNX graph under their own names;
the rest were constant-folded by the exporter, and are read back from the node
that consumes them:

- ActNorm: ``Mul(x + bias, exp(log_scale))``, so ``log_scale = log(that constant)``;
- the 1x1 convolution that follows it: ``Conv(that product, W)``, the frozen weight,
  factored again as ``W = P L U`` for the LU parametrisation;
- the top prior: ``(z - mean)^2 * exp(-2 log_std)``.

A recovered flow is kept only when it passes export's own parity check against
both graphs and inverts back to its input; otherwise nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from service.artifact import (
    ONNX_FILE,
    WEIGHTS_FILE,
    WEIGHTS_KEY,
    ArtifactError,
    file_entry,
    load_manifest,
    write_manifest,
)
from training.architectures import MultiScaleFlow
from training.export import ExportParityError, check_parity, parity_images, prepare_for_export
from training.flows import ActNorm, InvertibleConv1x1, dequantize
from training.weights import build_bundle_flow, flow_from_bundle, save_weights

GRAPH_PREFIX = "flow."  # export wraps the flow as ScoringGraph.flow
ROUND_TRIP_TOLERANCE = 1e-4  # max |inverse(forward(v)) - v| on the (0, 1) scale


class RecoveryError(RuntimeError):
    """The graph does not have the shape this recovery reads, or the result does not score like it."""


class Graph:
    """An ONNX graph's constants and who consumes what."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        self.nodes = list(model.graph.node)

    def consumer(self, name: str, op_type: str) -> onnx.NodeProto:
        found = [n for n in self.nodes if n.op_type == op_type and name in n.input]
        if len(found) != 1:
            raise RecoveryError(f"expected one {op_type} node reading {name}, found {len(found)}")
        return found[0]

    def other_constant(self, node: onnx.NodeProto, known: str) -> np.ndarray:
        others = [i for i in node.input if i != known and i in self.constants]
        if len(others) != 1:
            raise RecoveryError(f"{node.op_type} node {node.name}: expected one constant besides {known}")
        return self.constants[others[0]]


def lu_parameters(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """``W = P L U`` as InvertibleConv1x1 stores it: perm, unit-lower, strictly upper, sign and log|s|."""
    perm, lower, upper = torch.linalg.lu(weight.double())
    s = torch.diagonal(upper)
    return {
        "perm": perm,
        "lower": lower,
        "upper": torch.triu(upper, 1),
        "sign_s": torch.sign(s),
        "log_s": torch.log(torch.abs(s)),
    }


def recover_state_dict(flow: MultiScaleFlow, graph: Graph) -> dict[str, torch.Tensor]:
    state = {name: tensor.clone() for name, tensor in flow.state_dict().items()}
    named = 0
    for name in state:
        if GRAPH_PREFIX + name in graph.constants:
            value = torch.from_numpy(graph.constants[GRAPH_PREFIX + name].copy())
            if value.shape != state[name].shape:
                raise RecoveryError(f"{name}: {tuple(value.shape)} in the graph, {tuple(state[name].shape)} built")
            state[name] = value.to(state[name].dtype)
            named += 1
    modules = dict(flow.named_modules())
    for prefix, module in modules.items():
        if not isinstance(module, ActNorm):
            continue
        shifted = graph.consumer(f"{GRAPH_PREFIX}{prefix}.bias", "Add").output[0]
        scaling = graph.consumer(shifted, "Mul")
        state[f"{prefix}.log_scale"] = torch.log(torch.from_numpy(graph.other_constant(scaling, shifted).copy()))
        state[f"{prefix}.initialized"] = torch.tensor(True)
        conv_prefix = _next_sibling_name(prefix)
        following = modules.get(conv_prefix)
        if isinstance(following, InvertibleConv1x1):
            conv = graph.consumer(scaling.output[0], "Conv")
            weight = torch.from_numpy(graph.other_constant(conv, scaling.output[0]).copy()).reshape(
                following.num_channels, following.num_channels
            )
            if following.lu:
                for key, value in lu_parameters(weight).items():
                    state[f"{conv_prefix}.{key}"] = value.to(state[f"{conv_prefix}.{key}"].dtype)
            else:
                state[f"{conv_prefix}.weight"] = weight
    centred = graph.consumer(f"{GRAPH_PREFIX}top_prior.mean", "Sub").output[0]
    squared = graph.consumer(centred, "Pow").output[0]
    inverse_variance = graph.other_constant(graph.consumer(squared, "Mul"), squared)
    state["top_prior.log_std"] = -0.5 * torch.log(torch.from_numpy(inverse_variance.copy()))
    if not named:
        raise RecoveryError("no initializer of the graph carries a parameter's name: not an oodgate export")
    return state


def _next_sibling_name(prefix: str) -> str:
    """``levels.0.steps.transforms.3`` -> ``levels.0.steps.transforms.4``: the layer after it in its Sequential."""
    head, _, index = prefix.rpartition(".")
    return f"{head}.{int(index) + 1}"


def check_recovered(flow: MultiScaleFlow, bundle_dir: Path, images: np.ndarray) -> dict[str, float]:
    """Export's own parity check against both graphs, plus the inverse's round trip; raise past tolerance."""
    try:
        report = check_parity(prepare_for_export(flow), bundle_dir, images)
    except ExportParityError as exc:
        raise RecoveryError(f"recovered flow does not score like the bundle ({exc}); nothing written") from exc
    with torch.no_grad():
        v = dequantize(torch.from_numpy(images))
        round_trip = float((flow.inverse(flow.transform(v).latents) - v).abs().max())
    if round_trip > ROUND_TRIP_TOLERANCE:
        raise RecoveryError(f"recovered flow does not invert (round trip {round_trip:.3g}); nothing written")
    return {**report, "round_trip_max_abs": round_trip}


def recover(bundle_dir: Path, real_images: np.ndarray | None = None) -> dict[str, float]:
    """Write ``weights.npz`` into ``bundle_dir`` and list it in the manifest, once it checks out."""
    manifest = load_manifest(bundle_dir)
    if WEIGHTS_KEY in manifest.files:
        raise RecoveryError(f"{bundle_dir} already carries {manifest.files[WEIGHTS_KEY].path}")
    flow = build_bundle_flow(manifest)
    flow.load_state_dict(recover_state_dict(flow, Graph(onnx.load(str(bundle_dir / ONNX_FILE)))))
    flow.eval()
    report = check_recovered(flow, bundle_dir, parity_images(tuple(manifest.input.shape), real_images))
    save_weights(flow, bundle_dir / WEIGHTS_FILE)
    manifest.files[WEIGHTS_KEY] = file_entry(bundle_dir, WEIGHTS_FILE)
    manifest.training["weights_recovered_from"] = {"file": ONNX_FILE, **report}
    write_manifest(bundle_dir, manifest)
    flow_from_bundle(bundle_dir)  # the bundle as written loads
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.recover_weights", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="models/<name>/<version>/ without weights.npz")
    parser.add_argument(
        "--in-dist",
        help="an .npz of real images to check parity on as well (default: the "
        "bundle's FashionMNIST validation slice when the dataset is installed)",
    )
    args = parser.parse_args(argv)
    bundle_dir = Path(args.bundle)
    try:
        real = _real_images(bundle_dir, args.in_dist)
        report = recover(bundle_dir, real)
    except (ArtifactError, RecoveryError) as exc:
        print(f"recover_weights: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {bundle_dir / WEIGHTS_FILE}: max |Δ bpd| onnx {report['onnx_max_abs_delta_bpd']:.2e}, "
        f"torchscript {report['torchscript_max_abs_delta_bpd']:.2e}; "
        f"inverse round trip {report['round_trip_max_abs']:.2e}"
    )
    return 0


def _real_images(bundle_dir: Path, path: str | None) -> np.ndarray | None:
    from training.data import DatasetError, load_fashion_mnist, load_npz

    if path:
        return load_npz(Path(path))
    data = load_manifest(bundle_dir, verify=False).data
    if data is None or data.source != "fashion-mnist":
        return None
    try:
        images, _ = load_fashion_mnist("train", data.path)
    except DatasetError as exc:
        print(f"recover_weights: no real images to check on ({exc}); noise and constants only", file=sys.stderr)
        return None
    start, stop = data.slices["validation"]
    return images[start:stop]


if __name__ == "__main__":
    sys.exit(main())
