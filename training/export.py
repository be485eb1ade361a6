"""``oodgate-export CHECKPOINT``: write a servable bundle and prove it scores like the trained model.

The exported graph takes ``images: uint8[B, C, H, W]`` and does everything after
the raw pixels itself (midpoint dequantization, centering or logit, the flow),
returning the named outputs of :data:`service.artifact.GRAPH_OUTPUTS`. The
1x1 convolutions' log-determinants are computed once here, in float64, and baked
in as constants. Export then checks parity (eager vs TorchScript vs ONNX Runtime,
random and real images) and refuses to write a manifest when ``|Δ bpd|`` exceeds
the tolerance, so a bundle with a manifest is a bundle that passed. Beside the
graphs it writes ``weights.npz`` (:mod:`training.weights`), so that the bundle
alone can rebuild the eager flow and its inverse.

Test bpd is measured on the in-distribution test set (``--test``, else the
config's, FashionMNIST's test split for FashionMNIST runs), which the manifest
records for ``oodgate-eval``. :func:`export_checkpoint` is the command as a
function, for ``oodgate-build``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import logging
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.artifact import (
    GRAPH_OUTPUTS,
    INPUT_NAME,
    LATENT_ENERGY_OUTPUT,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    WEIGHTS_KEY,
    InputSpec,
    Manifest,
    TrainingData,
    bits_per_dim,
    file_entry,
    write_manifest,
)
from training.architectures import MultiScaleFlow
from training.data import DatasetError, detect_source, sha256_array, split_training_set
from training.flows import dequantize, freeze_invertible_convs
from training.weights import save_weights

PARITY_TOLERANCE_BPD = 1e-4
ONNX_OPSET = 18


class ExportParityError(RuntimeError):
    """The exported graphs do not score like the eager model."""


class ScoringGraph(nn.Module):
    """uint8 images in, the artifact's named statistics (:data:`service.artifact.GRAPH_OUTPUTS`) out."""

    def __init__(self, flow: MultiScaleFlow) -> None:
        super().__init__()
        self.flow = flow
        self.dims = flow.dims

    def forward(self, images: torch.Tensor):
        result = self.flow.transform(dequantize(images))
        log_pz, log_det = result.log_pz, result.log_det
        log_px = log_pz + log_det
        return (
            log_pz,
            log_det,
            log_px,
            bits_per_dim(log_px, self.dims),
            result.log_pz_levels,
            result.log_det_levels,
            result.latent_energy_levels,
        )


def prepare_for_export(flow: MultiScaleFlow) -> ScoringGraph:
    flow = flow.eval()
    freeze_invertible_convs(flow)
    for parameter in flow.parameters():
        parameter.requires_grad_(False)
    return ScoringGraph(flow).eval()


def export_torchscript(graph: ScoringGraph, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    traced = torch.jit.freeze(traced.eval())
    traced.save(str(path))


def export_onnx(graph: ScoringGraph, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter logs a warning per torchvision op it cannot register; we use none.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(GRAPH_OUTPUTS),
            dynamic_shapes={"images": {0: batch}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)


def run_eager(graph: ScoringGraph, images: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in graph(torch.from_numpy(images))]


def run_torchscript(path: Path, images: np.ndarray) -> list[np.ndarray]:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return [o.numpy() for o in module(torch.from_numpy(images))]


def run_onnx(path: Path, images: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if names != list(GRAPH_OUTPUTS):
        raise ExportParityError(f"ONNX outputs are {names}, expected {list(GRAPH_OUTPUTS)}")
    return session.run(None, {INPUT_NAME: images})


def check_parity(
    graph: ScoringGraph, bundle_dir: Path, images: np.ndarray, tolerance: float = PARITY_TOLERANCE_BPD
) -> dict:
    """Score ``images`` three ways; raise :class:`ExportParityError` past ``tolerance`` bpd."""
    eager = dict(zip(GRAPH_OUTPUTS, run_eager(graph, images), strict=True))
    report = {"images": int(len(images)), "tolerance_bpd": tolerance}
    for backend, runner, file in (("torchscript", run_torchscript, TORCHSCRIPT_FILE), ("onnx", run_onnx, ONNX_FILE)):
        outputs = dict(zip(GRAPH_OUTPUTS, runner(bundle_dir / file, images), strict=True))
        for name, ref in eager.items():
            if ref.shape != outputs[name].shape:
                raise ExportParityError(f"{backend}: {name} has shape {outputs[name].shape}, eager gives {ref.shape}")
        ref, got = (np.asarray(values["bpd"], np.float64) for values in (eager, outputs))
        max_delta = float(np.max(np.abs(ref - got)))
        if not np.isfinite(max_delta) or max_delta > tolerance:
            raise ExportParityError(
                f"{backend}: max |Δ bpd| = {max_delta:.3g} over {len(images)} images > {tolerance:g}"
            )
        report[f"{backend}_max_abs_delta_bpd"] = max_delta
        ref, got = (np.asarray(values[LATENT_ENERGY_OUTPUT], np.float64) for values in (eager, outputs))
        relative = float(np.max(np.abs(ref - got) / np.maximum(1.0, np.abs(ref))))
        if not np.isfinite(relative) or relative > tolerance:
            raise ExportParityError(f"{backend}: {LATENT_ENERGY_OUTPUT} differs by up to {relative:.3g} (relative)")
    return report


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "oodgate"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def parity_images(shape: tuple[int, int, int], real: np.ndarray | None, n: int = 64, seed: int = 0) -> np.ndarray:
    """Random noise, constants at both extremes, and real images if any: the cases that break exports."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.integers(0, 256, size=(n // 2, *shape), dtype=np.uint8),
        np.zeros((1, *shape), np.uint8),
        np.full((1, *shape), 255, np.uint8),
    ]
    if real is not None and len(real):
        parts.append(real[rng.choice(len(real), size=min(n, len(real)), replace=False)])
    return np.ascontiguousarray(np.concatenate(parts))


def write_graphs(
    flow: MultiScaleFlow, bundle_dir: Path, real_images: np.ndarray | None, tolerance: float = PARITY_TOLERANCE_BPD
) -> dict:
    """Write ``model.pt`` and ``model.onnx`` of ``flow`` into ``bundle_dir`` and return their parity report."""
    graph = prepare_for_export(flow)
    shape = tuple(int(s) for s in flow.input_shape)
    example = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    export_torchscript(graph, example, bundle_dir / TORCHSCRIPT_FILE)
    export_onnx(graph, example, bundle_dir / ONNX_FILE)
    return check_parity(graph, bundle_dir, parity_images(shape, real_images), tolerance)


def export_bundle(
    flow: MultiScaleFlow,
    bundle_dir: Path,
    *,
    name: str,
    version: str,
    architecture: dict,
    training: dict | None = None,
    data: TrainingData | None = None,
    metrics: dict[str, float] | None = None,
    real_images: np.ndarray | None = None,
    tolerance: float = PARITY_TOLERANCE_BPD,
) -> Manifest:
    """Export ``flow`` to ``bundle_dir``, check parity, and only then write the manifest."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    stale = bundle_dir / "manifest.json"
    if stale.exists():
        stale.unlink()  # a manifest is only ever next to files that passed parity
    shape = tuple(int(s) for s in flow.input_shape)
    parity = write_graphs(flow, bundle_dir, real_images, tolerance)
    save_weights(flow, bundle_dir / WEIGHTS_FILE)
    manifest = Manifest(
        name=name,
        version=version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        input=InputSpec(shape=shape, color_mode="L" if shape[0] == 1 else "RGB"),
        outputs=list(GRAPH_OUTPUTS),
        levels=flow.num_levels,
        architecture=architecture,
        training={**(training or {}), "export_parity": parity},
        data=data,
        metrics=metrics or {},
        files={
            "onnx": file_entry(bundle_dir, ONNX_FILE),
            "torchscript": file_entry(bundle_dir, TORCHSCRIPT_FILE),
            WEIGHTS_KEY: file_entry(bundle_dir, WEIGHTS_FILE),
        },
        packages=package_versions(),
    )
    write_manifest(bundle_dir, manifest)
    return manifest


class BundleExists(FileExistsError):
    """The bundle directory already holds a manifest and overwriting was not asked for."""


def data_record(config, images: np.ndarray, slices) -> TrainingData:
    """What the manifest says about the training data: enough to re-read the same slices and test set."""
    data = config.data
    test_sha256 = None
    if data.test_every or data.test_path is not None or (data.test_source or data.source) == "fashion-mnist":
        test = data.load_test(tuple(images.shape[1:]))
        test_sha256 = sha256_array(test) if test is not None else None
    return TrainingData(
        source=data.source,
        split="train",
        path=data.path,
        sha256=sha256_array(images),
        slices={k: tuple(v) for k, v in slices.ranges.items()},
        holdout_sha256=sha256_array(slices.holdout),
        slice_seed=data.slices.shuffle_seed,
        channels=data.channels,
        size=data.size,
        test_source=data.test_source or (data.source if data.test_path or data.source == "fashion-mnist" else None),
        test_path=data.test_path or (data.path if data.source == "fashion-mnist" else None),
        test_sha256=test_sha256,
        test_every=data.test_every,
    )


def export_checkpoint(
    checkpoint_path: str | Path,
    models_dir: str | Path = "models",
    version: str | None = None,
    *,
    force: bool = False,
    measure_test: bool = True,
    test: str | Path | None = None,
) -> Manifest:
    """``oodgate-export`` as a function: checkpoint -> parity-checked bundle with its data record and metrics.

    Test bpd is measured on the in-distribution test set when there is one and
    ``measure_test``: ``test`` (a folder, .npz, IDX file or CIFAR binary), else the
    config's (``data.test_path``, or FashionMNIST's test split). The manifest records
    that set, where ``oodgate-eval`` finds it. Raises :class:`BundleExists`,
    :class:`ExportParityError`, or :class:`DatasetError` when ``test`` cannot be read.
    """
    from training.checkpoints import model_from_checkpoint
    from training.objective import evaluate_bpd

    flow, config, checkpoint = model_from_checkpoint(checkpoint_path)
    version = version or config.version
    bundle_dir = Path(models_dir) / config.name / version
    if (bundle_dir / "manifest.json").exists() and not force:
        raise BundleExists(f"{bundle_dir} exists; pass --force to overwrite")
    if test is not None:  # the user's test set stands in for the config's; unreadable, it is an error
        data = config.data.model_copy(update={"test_source": detect_source(test), "test_path": str(test)})
        data.load_test(tuple(flow.input_shape))
        config = config.model_copy(update={"data": data})

    record, real, metrics, train_images = None, None, {}, None
    try:
        images = config.data.load()
        slices = split_training_set(images, config.data.slices)
        real = slices.validation
        train_images = len(slices.train)
        record = data_record(config, images, slices)
        metrics["validation_bpd"] = evaluate_bpd(flow, slices.validation, torch.device("cpu"))
        test_images = config.data.load_test(tuple(flow.input_shape)) if measure_test else None
        if test_images is not None:
            print(f"measuring test bpd on {len(test_images)} images...", file=sys.stderr)
            metrics["test_bpd"] = evaluate_bpd(flow, test_images, torch.device("cpu"))
        elif measure_test:
            print("oodgate-export: no in-distribution test set (pass --test PATH); no test bpd", file=sys.stderr)
    except DatasetError as exc:
        print(f"oodgate-export: training data unavailable ({exc}); exporting without data record", file=sys.stderr)

    history = checkpoint.get("history", [])
    training = {
        "config": config.train.model_dump(mode="json"),
        "steps": checkpoint["step"],
        # the epoch counter only moves at an epoch's end; a run that stops on its last step never gets there
        "epochs": round(checkpoint["step"] * config.train.batch_size / train_images, 3) if train_images else None,
        "seconds": checkpoint.get("seconds", history[-1]["seconds"] if history else None),
        "checkpoint": Path(checkpoint_path).name,
    }
    if config.negative is None:
        training["best_validation_bpd"] = checkpoint["best_val_bpd"]
    else:  # checkpoints were picked by bpd + weight * hinge; say so, and what taught the model
        training["best_validation_objective"] = checkpoint["best_val_bpd"]
        training["negative"] = config.negative.model_dump(mode="json")
    if config.augment is not None:
        training["augment"] = config.augment.model_dump(mode="json")
    if checkpoint.get("init_from"):
        training["init_from"] = checkpoint["init_from"]
    return export_bundle(
        flow,
        bundle_dir,
        name=config.name,
        version=version,
        architecture=config.model.model_dump(mode="json"),
        training=training,
        data=record,
        metrics=metrics,
        real_images=real,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodgate-export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a best.pt / last.pt written by oodgate-train")
    parser.add_argument("--models-dir", default="models", help="model repository root (default: models)")
    parser.add_argument("--version", help="bundle version (default: the config's)")
    parser.add_argument(
        "--test",
        metavar="PATH",
        help="in-distribution test images (folder, .npz, IDX file or CIFAR binary) to measure test bpd on; "
        "recorded in the manifest, where oodgate-eval finds them (default: the config's test set)",
    )
    parser.add_argument("--no-test", action="store_true", help="skip measuring test bpd on the test set")
    parser.add_argument("--force", action="store_true", help="overwrite an existing bundle")
    args = parser.parse_args(argv)
    try:
        manifest = export_checkpoint(
            args.checkpoint,
            args.models_dir,
            args.version,
            force=args.force,
            measure_test=not args.no_test,
            test=args.test,
        )
    except (BundleExists, DatasetError) as exc:
        print(f"oodgate-export: {exc}", file=sys.stderr)
        return 2
    except ExportParityError as exc:
        print(f"oodgate-export: parity check FAILED, no manifest written: {exc}", file=sys.stderr)
        return 1
    report_export(manifest, Path(args.models_dir) / manifest.name / manifest.version)
    return 0


def report_export(manifest: Manifest, bundle_dir: Path) -> None:
    parity = manifest.training["export_parity"]
    print(
        f"wrote {bundle_dir}: parity on {parity['images']} images, max |Δ bpd| torchscript "
        f"{parity['torchscript_max_abs_delta_bpd']:.2e}, onnx {parity['onnx_max_abs_delta_bpd']:.2e}; "
        + ", ".join(f"{k} {v:.4f}" for k, v in manifest.metrics.items())
    )


if __name__ == "__main__":
    sys.exit(main())
