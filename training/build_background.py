"""The general-domain background stages of ``oodgate-build``: mix, plan, train, attach.

The likelihood ratio ``bpd(x) - bpd_general(x)`` (Schirrmeister et al. 2020) needs a
second flow of the same architecture trained on images *in general*, so that what
both flows learn from local pixel statistics cancels (Kirichenko et al. 2020) and
what is left is what only the user's flow learned. It needs no OOD example of the
user's: the general mix comes from this machine (:mod:`training.general_images`)
or from a file the user names, resized to the user's image size and channels.

The background gets ``BACKGROUND_SHARE`` of the training minutes, the user's flow
the rest; both are ordinary runs that resume from ``last.pt``. Without the mix's
sources (and no ``--general PATH``) the build says so and goes on without it: the
bundle then has every score but ``likelihood_ratio``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from training.background import (
    BackgroundRunConfig,
    BackgroundSpec,
    attach_background,
    background_from_checkpoint,
    background_kind,
)
from training.config import DataConfig, RunConfig
from training.data import SliceSpec, load_images

BACKGROUND_SHARE = 1 / 3  # of the training minutes, for the general-domain flow
GENERAL_AUTO, GENERAL_NONE = "auto", "none"
VALIDATION_SHARE, VALIDATION_RANGE = 0.05, (20, 512)  # of the mix, for checkpoint selection
GENERAL_FILE = "general.npz"


def log(message: str) -> None:
    print(f"oodgate-build: {message}", file=sys.stderr, flush=True)


def fit_to(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Square mix images resized (LANCZOS) to the model's ``H x W`` when it is not square."""
    _, h, w = shape
    if images.shape[2:] == (h, w):
        return images
    out = np.empty((len(images), images.shape[1], h, w), dtype=np.uint8)
    for i, image in enumerate(images):
        mode = "L" if image.shape[0] == 1 else "RGB"
        pil = Image.fromarray(image[0] if mode == "L" else image.transpose(1, 2, 0), mode)
        resized = np.asarray(pil.resize((w, h), Image.LANCZOS))
        out[i] = resized[None] if mode == "L" else resized.transpose(2, 0, 1)
    return out


def general_images(general: str, shape: tuple[int, int, int], progress_log=log) -> np.ndarray | None:
    """The general mix at the model's shape: built here (``auto``), read from a file, or None (``none``/missing)."""
    channels, h, w = shape
    if general == GENERAL_NONE:
        return None
    if general != GENERAL_AUTO:
        return load_images("npz", general, channels, (h, w))
    from training.general_images import build_mix

    try:
        images, _, _ = build_mix(max(h, w), channels, seed=0, per_source=2500, log=lambda *a, **k: None)
    except RuntimeError as exc:
        progress_log(f"background: no general-domain mix on this machine, so no likelihood_ratio score ({exc})")
        return None
    return fit_to(images, shape)


def plan_background(main: RunConfig, general: str, steps: int) -> BackgroundRunConfig | None:
    """Write (once) and return the background run's config (``steps`` optimizer steps), or None without a mix."""
    run_dir = Path(main.out_dir) / "background"
    path = run_dir / "config.yaml"
    if path.exists():
        return BackgroundRunConfig.model_validate(yaml.safe_load(path.read_text()))
    shape = (int(main.data.channels), *main.data.size)
    images = general_images(general, shape)
    if images is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / GENERAL_FILE, images=images)
    batch = main.train.batch_size
    steps = max(1, steps)
    slices = SliceSpec(
        validation=int(np.clip(round(VALIDATION_SHARE * len(images)), *VALIDATION_RANGE)), holdout=0, shuffle_seed=0
    )
    train = main.train.model_copy(
        update={
            "warmup_steps": min(1000, max(1, steps // 10)),
            "decay_start": int(0.6 * steps),
            "epochs": math.ceil(steps / max(1, (len(images) - slices.validation) // batch)),
            "max_steps": steps,
            "val_every": max(1, min(500, steps // 10)),
            "checkpoint_every": max(1, min(200, steps // 20)),
            "num_val_images": slices.validation,
        }
    )
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


def train_background(config: BackgroundRunConfig, minutes: float, deadline: float, progress: bool) -> Path:
    from training.background import BackgroundTrainer
    from training.train import load_checkpoint, run_training

    last = Path(config.out_dir) / "last.pt"
    budget_s = 60 * minutes
    if last.exists():
        state = load_checkpoint(last)
        if state["step"] >= config.train.max_steps or state.get("seconds", 0.0) >= 0.98 * budget_s:
            log(f"background: trained earlier ({state['step']} steps; {last})")
            return Path(config.out_dir) / "best.pt"
        budget_s -= state.get("seconds", 0.0)
    limit = max(0.25, min(budget_s / 60, (deadline - time.monotonic()) / 60))
    code = run_training(BackgroundTrainer, config, "auto", limit, "oodgate-build background", progress=progress)
    if code != 0:
        raise RuntimeError(f"background training stopped with exit code {code}; re-run to resume")
    return Path(config.out_dir) / "best.pt"


def attach_stage(checkpoint: Path, bundle_dir: Path) -> bool:
    """Put the background graph into the bundle unless it is there from this checkpoint; True when it attached.

    Attaching drops the bundle's calibration, so the calibrate and evaluate stages run again.
    """
    from service.artifact import BACKGROUND_ONNX_KEY, load_manifest

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


CHOICE_FILE = "choice.json"  # in the background run dir: which calibration the domain-free rule kept
WITH, WITHOUT = "with background", "without background"


def choose_background(
    bundle_dir: Path, checkpoint: Path, test: str | None, calibrate, threads: int, progress: bool
) -> bool:
    """Keep the background flow only if the domain-free rule prefers it; True when kept.

    Both calibrations, with and without ``likelihood_ratio``, are measured on the
    domain-free synthetic sets and the in-distribution test set, and the report's own
    rule (:func:`training.evaluate.recommend`: the choosing targets, then the best worst
    AUROC over those sets) picks among the scores of both. A general mix that does not
    look like the user's images (say, light backgrounds for a dark-background domain)
    can make the ratio hurt; this is how a build finds out without an OOD example.
    ``calibrate(bundle_dir)`` calibrates the bundle as the build does.
    """
    import json
    import shutil
    import tempfile

    from training.background import detach_background
    from training.evaluate import EvalOptions, evaluate, recommend
    from training.ood_sets import DOMAIN_FREE_OOD

    record = checkpoint.parent / CHOICE_FILE
    stamp = checkpoint.stat().st_mtime
    if record.exists():
        said = json.loads(record.read_text())
        if said.get("checkpoint_mtime") == stamp:
            log(f"background: kept earlier ({said['choice']}: {said['why']})")
            return said["choice"] == WITH
    options = EvalOptions(in_dist=test, sets=DOMAIN_FREE_OOD, threads=threads, progress=progress)
    rows, names, eligible = [], [], set()
    with tempfile.TemporaryDirectory(dir=bundle_dir.parent) as scratch:
        plain = Path(scratch) / bundle_dir.name
        shutil.copytree(bundle_dir, plain)
        detach_background(plain)
        calibrate(plain)
        for label, directory in ((WITH, bundle_dir), (WITHOUT, plain)):
            result = evaluate(directory, options)
            rows += [{**row, "score": f"{label}: {row['score']}"} for row in result.rows]
            names += [f"{label}: {name}" for name in result.detector.score_names]
            eligible |= {f"{label}: {name}" for name in result.meets_targets}
    best, worst = recommend(rows, tuple(names), eligible=eligible, choice_sets=DOMAIN_FREE_OOD)
    choice = WITH if best is None or best.startswith(WITH) else WITHOUT
    value, on_set = worst.get(best, (float("nan"), "-"))
    why = f"best by the domain-free rule: {best} (worst AUROC {value:.3f} on {on_set})"
    if choice == WITHOUT:
        detach_background(bundle_dir)
        calibrate(bundle_dir)
    record.write_text(json.dumps({"checkpoint_mtime": stamp, "choice": choice, "why": why, "best": best}))
    log(f"background: {choice} ({why})")
    return choice == WITH


def background_was_refused(checkpoint: Path) -> bool:
    """The domain-free rule already dropped the background trained to this checkpoint."""
    import json

    record = checkpoint.parent / CHOICE_FILE
    if not record.exists():
        return False
    said = json.loads(record.read_text())
    return said.get("checkpoint_mtime") == checkpoint.stat().st_mtime and said["choice"] == WITHOUT
