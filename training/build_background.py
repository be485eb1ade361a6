"""The general-domain background stages of ``oodgate-build``: mix, plan, train, attach.

The likelihood ratio ``bpd(x) - bpd_general(x)`` (Schirrmeister et al. 2020) needs a
second flow of the same architecture trained on images *in general*, so that what
both flows learn from local pixel statistics cancels (Kirichenko et al. 2020) and
what is left is what only the user's flow learned. It needs no OOD example of the
user's: the general mix comes from this machine (:mod:`training.general_images`)
or from a file the user names, resized to the user's image size and channels.

The background gets ``BACKGROUND_SHARE`` (:mod:`training.build_plan`) of the training minutes, the user's flow
the rest; both are ordinary runs that resume from ``last.pt``. Without the mix's
sources (and no ``--general PATH``) the build says so and goes on without it: the
bundle then has every score but ``likelihood_ratio``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from service.artifact import BACKGROUND_ONNX_KEY, has_background, load_manifest
from training.background import (
    BackgroundRunConfig,
    BackgroundSpec,
    attach_background,
    background_from_checkpoint,
    background_kind,
    detach_background,
)
from training.build_plan import GENERAL_AUTO, GENERAL_NONE, log, schedule
from training.config import DataConfig, RunConfig
from training.data import SliceSpec, load_images, resize_images

VALIDATION_SHARE, VALIDATION_RANGE = 0.05, (20, 512)  # of the mix, for checkpoint selection
BACKGROUND_DIR = "background"  # in the build's run dir: the mix, the background's run and its choice
GENERAL_FILE = "general.npz"
CHOICE_FILE = "choice.json"  # in the background run dir: which calibration the domain-free rule kept
WITH, WITHOUT = "with background", "without background"


def general_images(general: str, shape: tuple[int, int, int], progress_log=log) -> np.ndarray | None:
    """The general mix at the model's shape: built here (``auto``), read from a file, or None (``none``/missing)."""
    channels, h, w = shape
    if general == GENERAL_NONE:
        return None
    if general != GENERAL_AUTO:
        return load_images("npz", general, channels, (h, w))
    from training.general_images import build_mix

    try:
        images, _, _ = build_mix(max(h, w), channels, seed=0, log=lambda *a, **k: None)
    except RuntimeError as exc:
        progress_log(f"background: no general-domain mix on this machine, so no likelihood_ratio score ({exc})")
        return None
    return resize_images(images, (h, w))


def prepare_general_mix(general: str, shape: tuple[int, int, int], run_dir: Path) -> bool:
    """Make the general mix at ``shape`` into ``run_dir`` (once); False when there is none (the plan's question)."""
    if (run_dir / GENERAL_FILE).exists():
        return True
    images = general_images(general, shape)
    if images is None:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / GENERAL_FILE, images=images)
    return True


def plan_background(main: RunConfig, general: str, steps: int) -> BackgroundRunConfig | None:
    """Write (once) and return the background run's config (``steps`` optimizer steps), or None without a mix."""
    run_dir = Path(main.out_dir) / BACKGROUND_DIR
    path = run_dir / "config.yaml"
    if path.exists():
        return BackgroundRunConfig.model_validate(yaml.safe_load(path.read_text()))
    if not prepare_general_mix(general, (int(main.data.channels), *main.data.size), run_dir):
        return None
    images = load_images("npz", run_dir / GENERAL_FILE)
    batch = main.train.batch_size
    steps = max(1, steps)
    slices = SliceSpec(
        validation=int(np.clip(round(VALIDATION_SHARE * len(images)), *VALIDATION_RANGE)), holdout=0, shuffle_seed=0
    )
    steps_per_epoch = (len(images) - slices.validation) // batch
    train = main.train.model_copy(update={**schedule(steps, steps_per_epoch), "num_val_images": slices.validation})
    config = BackgroundRunConfig(
        name=f"{main.name}-background",
        version=main.version,
        data=DataConfig(
            source="npz",
            path=str(run_dir / GENERAL_FILE),
            channels=main.data.channels,
            size=main.data.size,
            slices=slices,
        ),
        model=main.model,
        train=train,
        background=BackgroundSpec(mutation_rate=0.0, weight_decay=0.0),
        out_dir=str(run_dir),
    )
    path.write_text(
        "# written by oodgate-build: the general-domain background flow (likelihood_ratio)\n"
        + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    log(f"plan: background flow on {len(images)} general-domain images, {steps} steps")
    return config


def attach_stage(checkpoint: Path, bundle_dir: Path) -> bool:
    """Put the background graph into the bundle unless it is there from this checkpoint; True when it attached.

    Attaching drops the bundle's calibration, so the calibrate and evaluate stages run again.
    """
    manifest = load_manifest(bundle_dir, verify=True)
    recorded = (manifest.training or {}).get("background", {})
    if BACKGROUND_ONNX_KEY in manifest.files and recorded.get("checkpoint_mtime") == checkpoint.stat().st_mtime:
        return False
    flow, config, state = background_from_checkpoint(checkpoint)
    info = {
        "kind": background_kind(config.background),
        "data": config.data.path,
        "checkpoint": checkpoint.name,
        "checkpoint_mtime": checkpoint.stat().st_mtime,
        "steps": state.get("step"),
        "best_validation_bpd": state.get("best_val_bpd"),
        **config.background.model_dump(),
    }
    attach_background(flow, bundle_dir, info)
    log(f"background: attached to {bundle_dir} (general-domain flow, {state.get('step')} steps)")
    return True


def recorded_choice(checkpoint: Path) -> str | None:
    """WITH or WITHOUT when the domain-free rule already chose for the background trained to this checkpoint."""
    record = checkpoint.parent / CHOICE_FILE
    if not record.exists():
        return None
    said = json.loads(record.read_text())
    return said["choice"] if said.get("checkpoint_mtime") == checkpoint.stat().st_mtime else None


def calibrate_like(bundle_dir: Path, orientation: bool, threads: int, progress: bool) -> None:
    """Calibrate with the detector's defaults and the given orientation pass, as the bundle was calibrated."""
    from training.calibrate import calibrate_bundle, load_holdout
    from training.scoring import open_bundle

    bundle = open_bundle(bundle_dir, threads=threads, orientation=orientation)
    calibrate_bundle(bundle, load_holdout(bundle.manifest), progress=progress)


@dataclass(frozen=True)
class Ranking:
    """Which calibrated bundle the domain-free rule prefers, and why."""

    label: str | None  # the candidate whose best score wins; None when no score could be ranked
    best: str | None  # "<label>: <score>"
    why: str


def domain_free_options(test: str | None, threads: int, progress: bool):
    """What a background choice may look at: the domain-free synthetic sets and the in-distribution test set."""
    from training.evaluate import EvalOptions
    from training.ood_sets import DOMAIN_FREE_OOD

    return EvalOptions(in_dist=test, sets=DOMAIN_FREE_OOD, threads=threads, progress=progress)


def rank_calibrations(candidates: dict[str, Path], options) -> Ranking:
    """The report's own rule (:func:`training.targets.recommend`) over the scores of several calibrated bundles.

    Each bundle is evaluated with ``options`` (the domain-free synthetic sets and the
    in-distribution test set); every score is named ``"<label>: <score>"`` and the
    choosing targets, then the best worst AUROC over those sets, pick one. This is
    how a background is kept or dropped, and how two general mixes are compared,
    without an OOD example of the user's.
    """
    from training.evaluate import evaluate

    results = {label: evaluate(directory, options) for label, directory in candidates.items()}
    return rank_results(results, options.sets)


def rank_results(results: dict, choice_sets: tuple[str, ...]) -> Ranking:
    """:func:`rank_calibrations` on evaluation results already measured (label -> ``EvalResult``)."""
    from training.targets import recommend

    rows, names, eligible = [], [], set()
    for label, result in results.items():
        rows += [{**row, "score": f"{label}: {row['score']}"} for row in result.rows]
        names += [f"{label}: {name}" for name in result.detector.score_names]
        eligible |= {f"{label}: {name}" for name in result.meets_targets}
    best, worst = recommend(rows, tuple(names), eligible=eligible, choice_sets=choice_sets)
    if best is None:
        return Ranking(None, None, "no score could be ranked")
    label = next(label for label in results if best.startswith(f"{label}: "))
    value, on_set = worst[best]
    return Ranking(label, best, f"{best} (worst AUROC {value:.3f} on {on_set})")


def choose_background(bundle_dir: Path, checkpoint: Path, test: str | None, threads: int, progress: bool) -> bool:
    """Keep the background flow only if the domain-free rule prefers it; True when kept.

    Both calibrations, with and without ``likelihood_ratio`` (the bundle's own
    calibration, and one made the same way, orientation pass included, on a copy
    without the background), are measured on the domain-free synthetic sets and the
    in-distribution test set, and the report's own rule
    (:func:`training.targets.recommend`: the choosing targets, then the best worst
    AUROC over those sets) picks among the scores of both. A general mix that does
    not look like the user's images (say, light backgrounds for a dark-background
    domain) can make the ratio hurt; this is how a build finds out without an OOD
    example. The choice is recorded beside the checkpoint.
    """
    from service.runtimes import manifest_orientation

    said = recorded_choice(checkpoint)
    if said is not None:
        log(f"background: {said}, as chosen earlier ({checkpoint.parent / CHOICE_FILE})")
        return said == WITH
    orientation = manifest_orientation(load_manifest(bundle_dir))
    options = domain_free_options(test, threads, progress)
    with tempfile.TemporaryDirectory(dir=bundle_dir.parent) as scratch:
        plain = Path(scratch) / bundle_dir.name
        shutil.copytree(bundle_dir, plain)
        detach_background(plain)
        calibrate_like(plain, orientation, threads, progress)
        ranked = rank_calibrations({WITH: bundle_dir, WITHOUT: plain}, options)
    choice = WITH if ranked.label is None else ranked.label
    why = f"best by the domain-free rule: {ranked.why}"
    if choice == WITHOUT:
        detach_background(bundle_dir)
        calibrate_like(bundle_dir, orientation, threads, progress)
    stamp = checkpoint.stat().st_mtime
    record = {"checkpoint_mtime": stamp, "choice": choice, "why": why, "best": ranked.best}
    (checkpoint.parent / CHOICE_FILE).write_text(json.dumps(record))
    log(f"background: {choice} ({why})")
    return choice == WITH


def main(argv: list[str] | None = None) -> int:
    """``python -m training.build_background BUNDLE CHECKPOINT``: the build's keep-or-drop rule on a bundle.

    The bundle must have the background attached and be calibrated (``oodgate-background
    attach``, ``oodgate-calibrate``); run it on a copy, since a background the rule drops
    is taken out of the bundle.
    """
    parser = argparse.ArgumentParser(
        prog="python -m training.build_background", description=main.__doc__.split("\n")[0]
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("checkpoint", type=Path, help="the background's checkpoint (the choice is recorded beside it)")
    parser.add_argument("--in-dist", help="in-distribution test images (default: the bundle's recorded test set)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if not has_background(load_manifest(args.bundle)):  # the rule would compare the bundle with itself
        print(
            f"{args.bundle} has no background graph: attach it first "
            f"(oodgate-background attach {args.checkpoint} {args.bundle}, then oodgate-calibrate {args.bundle})",
            file=sys.stderr,
        )
        return 2
    kept = choose_background(args.bundle, args.checkpoint, args.in_dist, args.threads, progress=False)
    print(f"{args.bundle}: background {'kept' if kept else 'dropped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
