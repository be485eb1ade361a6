"""``oodgate-build IMAGES --name NAME``: from a folder (or array) of images to a served, calibrated gate.

One command runs the whole offline pipeline, each stage one of the existing
commands' functions, with progress and a time budget:

1. **read** the images (a folder of image files, recursive; an ``.npz``; an IDX
   file; CIFAR binary batches), inferring channels and size; mixed sizes are
   refused unless ``--size`` says what to resize to. Without ``--test``, every
   10th image (in the order read) is kept out as the test set;
2. **plan**: cut the train / validation / holdout slices (in a seeded
   permutation, so a folder sorted by class still gives a holdout like the rest),
   pick an architecture preset that fits the image size, time how fast it trains
   here, and size the schedule to the budget. The plan is written once as
   ``<run dir>/config.yaml`` (an ordinary ``oodgate-train`` config);
3. **train** (``oodgate-train``), resuming from ``last.pt``; then the **background**: a
   flow of the same architecture on images in general (``--general``, default ``auto``:
   :mod:`training.general_images` at the user's size and channels), a third of the
   training minutes (:mod:`training.build_background`);
4. **export** with the parity check (``oodgate-export``), test bpd on ``--test``, and
   attach the background graph;
5. **calibrate** on the holdout (``oodgate-calibrate``), with ``likelihood_ratio``; the
   background is kept only if the domain-free rule prefers that calibration to one
   without it (:func:`training.build_background.choose_background`);
6. **evaluate** (``oodgate-eval``) on the in-distribution test set, the user's OOD
   sets and the domain-free synthetic sets; the report goes into the bundle's
   ``report/`` folder and its domain-free rule sets the bundle's default score.

Re-running the same command resumes: a stage whose output is there and current
is skipped. The bundle is then served by ``oodgate-serve`` with no further step.

Presets (``--preset``, default ``auto``: by image size and budget; see PRESETS):

- ``tiny``: Glow, 2 steps per level, 16 hidden channels, for tests and smoke runs;
- ``small``: Glow, 4 steps per level, 64 hidden channels: budgets under 20 minutes;
- ``standard``: Glow, 8 steps per level, 128 hidden channels (the bundled models').

Levels: as many squeezes as the image size allows, at most 3, each halving H and
W (28x28: 2 levels; 32x32 and 24x24: 3).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from service.artifact import MANIFEST_NAME, ArtifactError, load_manifest
from service.calibration_file import calibration_summary
from training.architectures import FlowConfig, build_flow
from training.build_background import (
    BACKGROUND_SHARE,
    GENERAL_AUTO,
    GENERAL_NONE,
    attach_stage,
    background_was_refused,
    choose_background,
    plan_background,
    train_background,
)
from training.config import DataConfig, RunConfig, TrainConfig
from training.data import DatasetError, SliceSpec, detect_source, load_images, split_training_set, test_positions
from training.flows import dequantize, initialize_actnorms

PRESETS: dict[str, dict] = {
    "tiny": {"steps": 2, "hidden": 16},
    "small": {"steps": 4, "hidden": 64},
    "standard": {"steps": 8, "hidden": 128},
}
SMALL_BUDGET_MINUTES = 20.0  # auto picks "small" below this budget
MAX_LEVELS = 3
BATCH_SIZE = 64
SLICE_SEED = 0
HOLDOUT_SHARE, HOLDOUT_RANGE = 0.2, (50, 5000)  # the calibration set, from the training split
VALIDATION_SHARE, VALIDATION_RANGE = 0.07, (20, 2000)  # checkpoint selection
AFTER_TRAINING_SHARE = 0.2  # of the budget, kept for export, calibration and evaluation
MIN_TRAIN_MINUTES = 0.25
PROBE_STEPS = 6  # optimizer steps timed to size the schedule
TEST_EVERY = 10  # without --test, every 10th image (in the order read) is the test set
BUDGET_USED = 0.98  # a run that trained this share of its minutes is done, even short of the planned steps


class BuildError(RuntimeError):
    """The images or options cannot make a bundle; the message says what to change."""


@dataclass
class BuildOptions:
    images: str
    name: str
    version: str = "1"
    test: str | None = None
    ood: dict[str, str] | None = None
    minutes: float = 60.0
    models_root: str = "models"
    runs_root: str = "runs"
    channels: int | None = None
    size: tuple[int, int] | None = None
    preset: str = "auto"
    general: str = GENERAL_AUTO  # general-domain mix for the background flow: auto (this machine's), none, or an .npz
    threads: int | None = None
    progress: bool = True
    command: str | None = None  # recorded in the report as what produced it

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.name / self.version

    @property
    def bundle_dir(self) -> Path:
        return Path(self.models_root) / self.name / self.version


def log(message: str) -> None:
    print(f"oodgate-build: {message}", file=sys.stderr, flush=True)


def levels_for(height: int, width: int) -> int:
    levels = 0
    while levels < MAX_LEVELS and height % 2 == 0 and width % 2 == 0 and min(height, width) >= 4:
        height, width, levels = height // 2, width // 2, levels + 1
    if levels == 0:
        raise BuildError(f"{height}x{width} images cannot be squeezed even once; pass --size with even sides")
    return levels


def slice_spec(n: int) -> SliceSpec:
    holdout = int(np.clip(round(HOLDOUT_SHARE * n), *HOLDOUT_RANGE))
    validation = int(np.clip(round(VALIDATION_SHARE * n), *VALIDATION_RANGE))
    if n - holdout - validation < BATCH_SIZE:
        raise BuildError(
            f"{n} images leave {n - holdout - validation} to train on after {validation} validation and "
            f"{holdout} held-out images; give at least {holdout + validation + BATCH_SIZE}"
        )
    return SliceSpec(validation=validation, holdout=holdout, shuffle_seed=SLICE_SEED)


def choose_preset(options: BuildOptions) -> str:
    if options.preset != "auto":
        return options.preset
    return "small" if options.minutes < SMALL_BUDGET_MINUTES else "standard"


def data_config(options: BuildOptions) -> tuple[DataConfig, np.ndarray]:
    """The data section of the plan, and the training images it reads (channels and size resolved)."""
    source = detect_source(options.images)
    images = load_images(source, options.images, options.channels, options.size)
    channels = int(images.shape[1])
    test_source = detect_source(options.test) if options.test else None
    test_every = None if options.test else TEST_EVERY  # no test set given: cut one, as the clip-art split is cut
    if test_every:
        log(f"no --test set: every {test_every}th image (index % {test_every} == 0) is kept out as the test set")
        images = images[~test_positions(len(images), test_every)]
    config = DataConfig(
        source=source,
        path=str(options.images),
        channels=channels,
        size=tuple(int(s) for s in images.shape[2:]),
        test_source=test_source,
        test_path=str(options.test) if options.test else None,
        test_every=test_every,
        slices=slice_spec(len(images)),
    )
    return config, images


def images_per_second(flow_config: FlowConfig, train: np.ndarray, threads: int | None) -> float:
    """Training throughput of this architecture on this machine, from a few timed Adam steps."""
    if threads:
        torch.set_num_threads(threads)
    model = build_flow(flow_config, tuple(train.shape[1:]), seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = torch.from_numpy(train[:BATCH_SIZE])
    initialize_actnorms(model, lambda: model(dequantize(batch, noise=True)))
    started = None
    for step in range(PROBE_STEPS + 1):
        if step == 1:  # the first step pays for allocation and warm-up
            started = time.monotonic()
        log_pz, log_det = model(dequantize(batch, noise=True))
        loss = -(log_pz.sum(1) + log_det.sum(1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return PROBE_STEPS * len(batch) / (time.monotonic() - started)


def training_minutes(options: BuildOptions) -> float:
    """Minutes for the user's flow: the budget less what export, calibration, evaluation and the background take."""
    share = 1.0 if options.general == GENERAL_NONE else 1.0 - BACKGROUND_SHARE
    return max(MIN_TRAIN_MINUTES, options.minutes * (1 - AFTER_TRAINING_SHARE) * share)


def background_minutes(options: BuildOptions) -> float:
    return max(MIN_TRAIN_MINUTES, options.minutes * (1 - AFTER_TRAINING_SHARE) * BACKGROUND_SHARE)


def plan(options: BuildOptions) -> RunConfig:
    """Write (once) and return the run config: data, slices, architecture and a schedule sized to the budget."""
    path = options.run_dir / "config.yaml"
    if path.exists():
        log(f"plan: reusing {path}")
        return RunConfig.model_validate(yaml.safe_load(path.read_text()))
    data, images = data_config(options)
    c, h, w = images.shape[1:]
    log(f"read {len(images)} images of {c}x{h}x{w} ({'RGB' if c == 3 else 'gray'}) from {options.images}")
    preset = choose_preset(options)
    flow_config = FlowConfig(architecture="glow", levels=levels_for(h, w), **PRESETS[preset])
    train = split_training_set(images, data.slices).train
    rate = images_per_second(flow_config, train, options.threads)
    train_minutes = training_minutes(options)
    steps = max(1, int(rate * 60 * train_minutes / BATCH_SIZE))
    steps_per_epoch = max(1, len(train) // BATCH_SIZE)
    config = RunConfig(
        name=options.name,
        version=options.version,
        data=data,
        model=flow_config,
        train=TrainConfig(
            batch_size=BATCH_SIZE,
            lr=1e-3,
            warmup_steps=min(1000, max(1, steps // 10)),
            decay_start=int(0.6 * steps),
            epochs=math.ceil(steps / steps_per_epoch),
            max_steps=steps,
            val_every=max(1, min(500, steps // 10)),
            checkpoint_every=max(1, min(200, steps // 20)),
            num_val_images=min(2000, data.slices.validation),
            threads=options.threads,
        ),
        out_dir=str(options.run_dir),
    )
    log(
        f"plan: preset {preset} ({flow_config.levels} levels x {flow_config.steps} steps, {flow_config.hidden} "
        f"hidden), {rate:.0f} images/s here -> {steps} steps ({steps * BATCH_SIZE / len(train):.1f} epochs) in "
        f"about {train_minutes:.1f} min; slices {data.slices.model_dump()}"
    )
    options.run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by oodgate-build; oodgate-train can resume it: oodgate-train "
        + str(path)
        + " --resume\n"
        + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    return config


def train_stage(config: RunConfig, options: BuildOptions, deadline: float) -> Path:
    from training.train import Trainer, load_checkpoint, run_training

    best = config.run_dir / "best.pt"
    last = config.run_dir / "last.pt"
    budget_s = 60 * training_minutes(options)
    if last.exists():
        state = load_checkpoint(last)
        if state["step"] >= config.train.max_steps or state.get("seconds", 0.0) >= BUDGET_USED * budget_s:
            log(f"train: done earlier ({state['step']} steps in {state.get('seconds', 0.0) / 60:.1f} min; {last})")
            return best
        budget_s -= state.get("seconds", 0.0)  # an interrupted build trains only for what its budget has left
    minutes = max(MIN_TRAIN_MINUTES, min(budget_s / 60, (deadline - time.monotonic()) / 60))
    code = run_training(Trainer, config, "auto", minutes, "oodgate-build", progress=options.progress)
    if code != 0:
        raise BuildError(f"training stopped with exit code {code}; fix the cause and re-run to resume")
    if load_checkpoint(last)["step"] < config.train.max_steps:
        log("train: out of time before the planned steps; exporting the best checkpoint so far")
    return best


def stage_is_current(bundle_dir: Path, checkpoint: Path) -> bool:
    """The bundle was exported from this checkpoint after it was written."""
    manifest_path = bundle_dir / MANIFEST_NAME
    if not manifest_path.exists():
        return False
    try:
        load_manifest(bundle_dir, verify=True)
    except ArtifactError:
        return False
    return manifest_path.stat().st_mtime >= checkpoint.stat().st_mtime


def export_stage(checkpoint: Path, options: BuildOptions) -> None:
    from training.export import export_checkpoint, report_export

    if stage_is_current(options.bundle_dir, checkpoint):
        log(f"export: {options.bundle_dir} is current")
        return
    manifest = export_checkpoint(checkpoint, options.models_root, options.version, force=True)
    report_export(manifest, options.bundle_dir)


def calibrate_dir(bundle_dir: Path, threads: int | None, progress: bool) -> None:
    """Calibrate a bundle as the build does (the detector's defaults), unless it is calibrated."""
    from training.calibrate import calibrate_bundle, load_holdout
    from training.scoring import open_bundle

    bundle = open_bundle(bundle_dir, threads=threads or 0)
    if bundle.manifest.calibration is not None:
        log("calibrate: done earlier")
        return
    detector = calibrate_bundle(bundle, load_holdout(bundle.manifest), progress=progress)
    info = calibration_summary(detector)
    log(f"calibrate: {info['n_holdout']} held-out images, scores {info['scores']}")


def calibrate_stage(options: BuildOptions) -> None:
    calibrate_dir(options.bundle_dir, options.threads, options.progress)


def build(options: BuildOptions) -> Path:
    """Every stage in order; returns the bundle directory."""
    started = time.monotonic()
    deadline = started + 60 * options.minutes
    config = plan(options)
    background = None
    if options.general != GENERAL_NONE:
        steps = int(config.train.max_steps * background_minutes(options) / training_minutes(options))
        background = plan_background(config, options.general, steps)
    checkpoint = train_stage(config, options, deadline - 60 * background_minutes(options) * (background is not None))
    background_checkpoint = None
    if background is not None:
        background_checkpoint = train_background(background, background_minutes(options), deadline, options.progress)
    export_stage(checkpoint, options)
    if background_checkpoint is not None and not background_was_refused(background_checkpoint):
        attach_stage(background_checkpoint, options.bundle_dir)  # drops the calibration: the stages after redo
    calibrate_stage(options)
    if background_checkpoint is not None and not background_was_refused(background_checkpoint):
        choose_background(
            options.bundle_dir,
            background_checkpoint,
            options.test,
            lambda directory: calibrate_dir(directory, options.threads, options.progress),
            options.threads or 0,
            options.progress,
        )
    evaluate_stage(options)
    log(f"done in {time.monotonic() - started:.0f} s: serve it with  oodgate-serve --models-root {options.models_root}")
    return options.bundle_dir


def evaluate_stage(options: BuildOptions) -> None:
    """The OOD report into ``<bundle>/report/``; its domain-free rule picks the default score."""
    from training.evaluate import EvalOptions, evaluate_bundle

    report_dir = options.bundle_dir / "report"
    report, manifest = report_dir / "README.md", options.bundle_dir / MANIFEST_NAME
    asked = json.dumps({"test": options.test, "ood": options.ood or {}}, sort_keys=True)
    record = options.run_dir / "evaluated.json"  # what the last report was made of
    current = report.exists() and report.stat().st_mtime >= manifest.stat().st_mtime
    if current and record.exists() and record.read_text() == asked:
        log(f"evaluate: {report_dir} is current")
        return
    result = evaluate_bundle(
        options.bundle_dir,
        report_dir,
        EvalOptions(
            in_dist=options.test,
            ood_sets=dict(options.ood or {}),
            progress=options.progress,
            threads=options.threads or 0,
        ),
        set_default=True,
        command=options.command,
    )
    record.write_text(asked)
    log(f"evaluate: report in {report_dir}; default score {result.recommended}")


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size is HxW, e.g. 32x32, not {text!r}") from exc
    if height < 2 or width < 2:
        raise argparse.ArgumentTypeError(f"size {text} is too small")
    return height, width


def parse_ood(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--ood takes NAME=PATH, not {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodgate-build", description=__doc__.splitlines()[0])
    parser.add_argument("images", help="folder of image files (recursive), .npz, IDX file or CIFAR .bin folder")
    parser.add_argument("--name", required=True, help="model name (lower case, digits, . _ -)")
    parser.add_argument("--version", default="1")
    parser.add_argument("--test", help="in-distribution test images (same forms): measured on, never trained on")
    parser.add_argument("--ood", type=parse_ood, action="append", default=[], metavar="NAME=PATH", help="OOD set")
    parser.add_argument("--minutes", type=float, default=60.0, help="time budget for the whole build (default 60)")
    parser.add_argument("--models-root", default="models", help="model repository to write the bundle into")
    parser.add_argument("--runs-root", default="runs", help="where checkpoints go (runs/<name>/<version>/)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="convert to gray (1) or RGB (3)")
    parser.add_argument("--size", type=parse_size, help="resize every image to HxW (required for mixed sizes)")
    parser.add_argument("--preset", choices=("auto", *PRESETS), default="auto", help="architecture preset")
    parser.add_argument(
        "--general",
        default=GENERAL_AUTO,
        metavar="auto|none|PATH",
        help="images in general for the background flow of likelihood_ratio: auto (built from this machine's "
        "packages, training/general_images.py), none, or an .npz",
    )
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (1 on a shared machine)")
    parser.add_argument("--no-progress", action="store_true", help="no live bars; stage lines stay")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.ood]
    if len(set(names)) != len(names):
        parser.error(f"--ood names must differ: {names}")
    options = BuildOptions(
        images=args.images,
        name=args.name,
        version=args.version,
        test=args.test,
        ood=dict(args.ood),
        minutes=args.minutes,
        models_root=args.models_root,
        runs_root=args.runs_root,
        channels=args.channels,
        size=args.size,
        preset=args.preset,
        general=args.general,
        threads=args.threads,
        progress=not args.no_progress,
        command="oodgate-build " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
    )
    try:
        RunConfig(name=options.name, version=options.version)
        build(options)
    except (BuildError, DatasetError, ArtifactError, ValueError) as exc:
        print(f"oodgate-build: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
