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
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from service.artifact import MANIFEST_NAME, ArtifactError, load_manifest
from service.calibration_file import calibration_summary
from training.background import BackgroundTrainer
from training.build_background import (
    BACKGROUND_DIR,
    WITHOUT,
    attach_stage,
    choose_background,
    plan_background,
    prepare_general_mix,
    recorded_choice,
)
from training.build_plan import (
    BUDGET_USED,
    GENERAL_AUTO,
    GENERAL_NONE,
    MIN_TRAIN_MINUTES,
    PRESETS,
    BuildError,
    BuildOptions,
    background_minutes,
    log,
    plan,
    training_minutes,
)
from training.config import RunConfig
from training.data import DatasetError
from training.train import Trainer


def train_within(trainer_cls, config: RunConfig, minutes: float, deadline: float, what: str, progress: bool) -> Path:
    """Train ``config`` for at most ``minutes`` (and never past ``deadline``), resuming; returns ``best.pt``.

    A run that reached its steps, or spent its budget, is done; an interrupted one trains
    only for what its budget has left. ``what`` names the run in the log ("train", "background").
    """
    from training.checkpoints import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint
    from training.train import run_training

    best = config.run_dir / BEST_CHECKPOINT
    last = config.run_dir / LAST_CHECKPOINT
    budget_s = 60 * minutes
    if last.exists():
        state = load_checkpoint(last)
        if state["step"] >= config.train.max_steps or state.get("seconds", 0.0) >= BUDGET_USED * budget_s:
            log(f"{what}: done earlier ({state['step']} steps in {state.get('seconds', 0.0) / 60:.1f} min; {last})")
            return best
        budget_s -= state.get("seconds", 0.0)
    limit = max(MIN_TRAIN_MINUTES, min(budget_s / 60, (deadline - time.monotonic()) / 60))
    code = run_training(trainer_cls, config, "auto", limit, f"oodgate-build {what}", progress=progress)
    if code != 0:
        raise BuildError(f"{what}: training stopped with exit code {code}; fix the cause and re-run to resume")
    if load_checkpoint(last)["step"] < config.train.max_steps:
        log(f"{what}: out of time before the planned steps; using the best checkpoint so far")
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


def calibrate_stage(options: BuildOptions) -> None:
    """Calibrate the bundle with the detector's defaults, unless it is calibrated."""
    from training.calibrate import calibrate_bundle, load_holdout
    from training.scoring import open_bundle

    bundle = open_bundle(options.bundle_dir, threads=options.threads or 0)
    if bundle.manifest.calibration is not None:
        log("calibrate: done earlier")
        return
    detector = calibrate_bundle(bundle, load_holdout(bundle.manifest), progress=options.progress)
    info = calibration_summary(detector)
    log(f"calibrate: {info['n_holdout']} held-out images, scores {info['scores']}")


def build(options: BuildOptions) -> Path:
    """Every stage in order; returns the bundle directory."""
    started = time.monotonic()
    deadline = started + 60 * options.minutes
    mix_dir = options.run_dir / BACKGROUND_DIR
    config, options = plan(options, find_mix=lambda shape: prepare_general_mix(options.general, shape, mix_dir))
    background = None
    if options.general != GENERAL_NONE:
        steps = int(config.train.max_steps * background_minutes(options) / training_minutes(options))
        background = plan_background(config, options.general, steps)
        if background is None:  # a run planned before the mix was looked for first; its schedule stands
            options = replace(options, general=GENERAL_NONE)
    main_deadline = deadline - 60 * background_minutes(options) * (background is not None)
    checkpoint = train_within(Trainer, config, training_minutes(options), main_deadline, "train", options.progress)
    background_checkpoint = None
    if background is not None:
        background_checkpoint = train_within(
            BackgroundTrainer, background, background_minutes(options), deadline, "background", options.progress
        )
    export_stage(checkpoint, options)
    keep = background_checkpoint is not None and recorded_choice(background_checkpoint) != WITHOUT
    if keep:
        attach_stage(background_checkpoint, options.bundle_dir)  # drops the calibration: the stages after redo
    calibrate_stage(options)
    if keep:
        choose_background(
            options.bundle_dir, background_checkpoint, options.test, options.threads or 0, options.progress
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
