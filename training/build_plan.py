"""The plan stage of ``oodgate-build``: its options, the slices, the preset and a schedule sized to the budget.

Kept apart from the stages that run the plan (:mod:`training.build`) so each file has
one job: this one decides, once, what the build will do and writes it as an ordinary
run config.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from training.architectures import FlowConfig, build_flow
from training.config import DataConfig, RunConfig, TrainConfig
from training.data import SliceSpec, detect_source, load_images, split_training_set, test_positions
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
BACKGROUND_SHARE = 1 / 3  # of the training minutes, for the general-domain background flow
GENERAL_AUTO, GENERAL_NONE = "auto", "none"  # --general: build the mix here, or no background
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


NO_BACKGROUND_MARK = "no-background"  # in the run dir: planned without a background (no general mix turned up)


def planned_options(options: BuildOptions) -> BuildOptions:
    """The options as the plan was made: ``general`` is ``none`` once a plan found no general mix.

    Why a mark: a resumed build must size nothing anew (a checkpoint follows the written
    schedule), and must not look for the mix again, whose absence decided that schedule.
    """
    if options.general != GENERAL_NONE and (options.run_dir / NO_BACKGROUND_MARK).exists():
        return replace(options, general=GENERAL_NONE)
    return options


def schedule(steps: int, steps_per_epoch: int) -> dict:
    """The schedule fields of a planned run of ``steps`` steps: warm-up, decay, validation and checkpoints."""
    return {
        "warmup_steps": min(1000, max(1, steps // 10)),
        "decay_start": int(0.6 * steps),
        "epochs": math.ceil(steps / max(1, steps_per_epoch)),
        "max_steps": steps,
        "val_every": max(1, min(500, steps // 10)),
        "checkpoint_every": max(1, min(200, steps // 20)),
    }


def plan(
    options: BuildOptions, find_mix: Callable[[tuple[int, int, int]], bool] | None = None
) -> tuple[RunConfig, BuildOptions]:
    """Write (once) and return the run config, and the options as planned (:func:`planned_options`).

    The config holds the data, slices, architecture and a schedule sized to the
    budget. How much of the budget is the user's flow's depends on whether a
    background flow will train beside it, so that is settled first, once the
    images' shape is known: ``find_mix(shape)`` says whether a general-domain mix
    exists for it (and prepares it); without one, the flow gets every training minute.
    """
    path = options.run_dir / "config.yaml"
    if path.exists():
        log(f"plan: reusing {path}")
        return RunConfig.model_validate(yaml.safe_load(path.read_text())), planned_options(options)
    data, images = data_config(options)
    c, h, w = images.shape[1:]
    log(f"read {len(images)} images of {c}x{h}x{w} ({'RGB' if c == 3 else 'gray'}) from {options.images}")
    options = planned_options(options)
    if options.general != GENERAL_NONE and not (find_mix is not None and find_mix((int(c), int(h), int(w)))):
        options.run_dir.mkdir(parents=True, exist_ok=True)
        (options.run_dir / NO_BACKGROUND_MARK).write_text(
            "no general-domain mix: every training minute is the flow's\n"
        )
        log("plan: no general-domain mix, so no background flow: the user's flow gets every training minute")
        options = replace(options, general=GENERAL_NONE)
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
            **schedule(steps, steps_per_epoch),
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
    return config, options
