"""``oodgate-train CONFIG``: maximum-likelihood training of a flow on uint8 images.

Uniform dequantization, Adam with linear warm-up, global gradient clipping,
validation bpd at the bin midpoint (the numbers the exported graph gives),
``last.pt`` every few steps and ``best.pt`` on a new best validation bpd. A
config may start from another run's weights (``init_from``, fine-tuning) and add
a hinge against a nuisance transform (``negative``, see
:class:`training.config.NegativeSpec`); checkpoints are then picked by the same
objective on the validation images, bpd plus the weighted hinge. A
checkpoint is a dict of tensors and plain values, read back with
``weights_only=True``: no pickled module ever. A non-finite loss stops the run
with a message before anything is written, so no checkpoint is ever broken.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from service.artifact import bits_per_dim
from training.architectures import build_flow
from training.augment import random_shift
from training.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    IncompatibleCheckpoint,
    check_parent,
    load_checkpoint,
    load_parent,
    save_checkpoint,
)
from training.config import RunConfig, load_config
from training.data import DatasetError, Slices, split_training_set
from training.flows import all_actnorms_initialized, dequantize, initialize_actnorms
from training.objective import evaluate_bpd, evaluate_negative, negative_terms


class TrainingDiverged(RuntimeError):
    """The loss went non-finite; nothing was written for the step that caused it."""


def load_training_images(config: RunConfig) -> np.ndarray:
    return config.data.load()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device 'cuda' requested, but torch sees no CUDA device")
    return torch.device(name)


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    best_val_bpd: float = float("inf")  # the selection objective: bpd, plus the weighted hinge with ``negative``
    seconds: float = 0.0  # training wall time, summed over every resumed segment


class Trainer:
    def __init__(self, config: RunConfig, slices: Slices, resume: Path | None = None) -> None:
        self.config = config
        self.slices = slices
        self.tc = config.train
        if self.tc.threads:
            torch.set_num_threads(self.tc.threads)
        self.device = resolve_device(self.tc.device)
        self.input_shape = tuple(int(s) for s in slices.train.shape[1:])
        self.model = build_flow(config.model, self.input_shape, seed=self.tc.seed).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.tc.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.progress = Progress()
        self.history: list[dict] = []
        self.run_dir = config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stop_requested = False
        self.show_progress = True  # the live bar; validation lines are printed either way
        self._segment_start: float | None = None  # set while fit() runs
        self.init_from: dict | None = None  # the run this one was fine-tuned from
        if resume is not None:
            self._resume(resume)
        elif config.init_from:
            self._init_from(Path(config.init_from))

    @property
    def total_steps(self) -> int:
        steps_per_epoch = len(self.slices.train) // self.tc.batch_size
        return self.tc.max_steps or steps_per_epoch * self.tc.epochs

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, constant, then an optional linear decay to 0; depends on the step alone."""
        factor = min(1.0, (step + 1) / self.tc.warmup_steps) if self.tc.warmup_steps else 1.0
        start = self.tc.decay_start
        if start is not None and step >= start:
            factor *= max(0.0, (self.total_steps - step) / max(1, self.total_steps - start))
        return factor

    # -- checkpoints -------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "best_val_bpd": self.progress.best_val_bpd,
            "seconds": self._elapsed(),
            "config": self.config.model_dump(mode="json"),
            "input_shape": list(self.input_shape),
            "slices": {k: list(v) for k, v in self.slices.ranges.items()},
            "history": self.history,
            "init_from": self.init_from,
        }

    def _resume(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.progress = Progress(
            checkpoint["step"], checkpoint["epoch"], checkpoint["best_val_bpd"], checkpoint.get("seconds", 0.0)
        )
        self.history = list(checkpoint.get("history", []))
        self.init_from = checkpoint.get("init_from")
        print(f"resumed from {path} at step {self.progress.step} (epoch {self.progress.epoch + 1})", file=sys.stderr)

    def _init_from(self, path: Path) -> None:
        """Load another run's weights, refusing one whose architecture, input or data slicing differ."""
        checkpoint = load_parent(path)
        parent = check_parent(path, checkpoint, self.config, self.input_shape, self.slices)
        self.model.load_state_dict(checkpoint["model"])
        self.init_from = {
            "checkpoint": str(path),
            "name": parent.name,
            "steps": checkpoint["step"],
            "seconds": checkpoint.get("seconds"),
            "best_val_bpd": checkpoint["best_val_bpd"],
            "train": parent.train.model_dump(mode="json"),
            "init_from": checkpoint.get("init_from"),
        }
        print(f"starting from the weights of {path} (step {checkpoint['step']})", file=sys.stderr)

    def _checkpoint(self, best: bool = False) -> None:
        state = self._state()
        save_checkpoint(self.run_dir / LAST_CHECKPOINT, state)
        if best:
            save_checkpoint(self.run_dir / BEST_CHECKPOINT, state)

    def _elapsed(self) -> float:
        running = time.monotonic() - self._segment_start if self._segment_start is not None else 0.0
        return self.progress.seconds + running

    # -- training ----------------------------------------------------------
    def _batches(self, epoch: int):
        """The epoch's shuffled batches; seeded by epoch, so a resumed run sees the same order."""
        order = np.random.default_rng(self.tc.seed + epoch).permutation(len(self.slices.train))
        bs = self.tc.batch_size
        for start in range(0, len(order) - bs + 1, bs):
            yield torch.from_numpy(self.slices.train[np.sort(order[start : start + bs])])

    def _initialize(self) -> None:
        if all_actnorms_initialized(self.model):
            return
        generator = np.random.default_rng(self.tc.seed)
        index = generator.choice(len(self.slices.train), size=min(512, len(self.slices.train)), replace=False)
        pixels = torch.from_numpy(self.slices.train[np.sort(index)]).to(self.device)
        torch.manual_seed(self.tc.seed)
        count = initialize_actnorms(self.model, lambda: self.model(dequantize(pixels, noise=True)))
        print(f"initialised {count} ActNorm layers from {len(pixels)} images", file=sys.stderr)

    def _loss(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The loss to minimise, the batch's mean bpd, and (negative training) the mean hinge."""
        use_amp = self.tc.amp and self.device.type == "cuda"
        negative = self.config.negative
        if self.config.augment is not None:
            pixels = random_shift(pixels, self.config.augment.shift_pixels)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            x = dequantize(pixels, noise=True)
            if negative is None:
                log_pz, log_det = self.model(x)
                bpd = bits_per_dim(log_pz.float().sum(1) + log_det.float().sum(1), self.model.dims).mean()
                return bpd, bpd, None
            upright, _, hinge = negative_terms(self.model, x, negative)
        bpd, hinge = upright.mean(), hinge.mean()
        return bpd + negative.weight * hinge, bpd, hinge

    def validation_metrics(self) -> dict[str, float]:
        """Validation bpd and, with negative training, the hinge and the objective checkpoints are picked by."""
        images = self.slices.validation
        if self.tc.num_val_images:
            images = images[: self.tc.num_val_images]
        negative = self.config.negative
        if negative is None:
            bpd = evaluate_bpd(self.model, images, self.device)
            return {"val_bpd": bpd, "val_objective": bpd}
        m = evaluate_negative(self.model, images, self.device, negative)
        return {
            "val_bpd": m["bpd"],
            "val_hinge": m["hinge"],
            "val_beats_transformed": m["beats_transformed"],
            "val_objective": m["bpd"] + negative.weight * m["hinge"],
        }

    def validate(self) -> float:
        """The value checkpoints are picked by: validation bpd (+ weighted hinge with negative training)."""
        return self.validation_metrics()["val_objective"]

    def fit(self, max_minutes: float | None = None) -> Progress:
        self._initialize()
        self.model.train()
        tc = self.tc
        steps_per_epoch = len(self.slices.train) // tc.batch_size
        total_steps = self.total_steps
        self._segment_start = started = time.monotonic()
        bar = tqdm(
            total=total_steps,
            initial=self.progress.step,
            desc=self.config.name,
            unit="step",
            dynamic_ncols=True,
            disable=not self.show_progress,
        )
        ema_bpd = ema_hinge = None
        window_start, window_images = time.monotonic(), 0
        try:
            while self.progress.step < total_steps and self.progress.epoch < tc.epochs and not self.stop_requested:
                skip = self.progress.step - self.progress.epoch * steps_per_epoch
                for index, pixels in enumerate(self._batches(self.progress.epoch)):
                    if index < skip:
                        continue
                    pixels = pixels.to(self.device, non_blocking=True)
                    loss, batch_bpd, batch_hinge = self._loss(pixels)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(
                            f"non-finite loss ({loss.item()}) at step {self.progress.step + 1}; nothing was written "
                            f"for this step. The last good checkpoints are in {self.run_dir}. Try a lower lr, "
                            f"more warm-up steps or a tighter grad_clip, then resume with --resume."
                        )
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                    if not torch.isfinite(grad_norm):
                        raise TrainingDiverged(
                            f"non-finite gradient norm at step {self.progress.step + 1}; nothing was written. "
                            f"Last good checkpoints: {self.run_dir}."
                        )
                    self.optimizer.step()
                    self.scheduler.step()
                    self.progress.step += 1
                    value = batch_bpd.item()
                    ema_bpd = value if ema_bpd is None else 0.98 * ema_bpd + 0.02 * value
                    if batch_hinge is not None:
                        value = batch_hinge.item()
                        ema_hinge = value if ema_hinge is None else 0.98 * ema_hinge + 0.02 * value
                    window_images += len(pixels)
                    elapsed = time.monotonic() - window_start
                    if elapsed >= 2.0:
                        rate = window_images / elapsed
                        window_start, window_images = time.monotonic(), 0
                        shown = {"bpd": f"{ema_bpd:.3f}"}
                        if ema_hinge is not None:
                            shown["hinge"] = f"{ema_hinge:.4f}"
                        bar.set_postfix(**shown, img_s=f"{rate:.0f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
                    bar.update(1)
                    step = self.progress.step
                    if step % tc.val_every == 0:
                        self._validate_and_checkpoint(bar, ema_bpd)
                    elif step % tc.checkpoint_every == 0:
                        self._checkpoint()
                    out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
                    if step >= total_steps or self.stop_requested or out_of_time:
                        self.stop_requested = self.stop_requested or out_of_time
                        break
                else:
                    self.progress.epoch += 1
                    self._validate_and_checkpoint(bar, ema_bpd)
                    continue
                break
        finally:
            bar.close()
        if self.progress.step % tc.val_every:
            self._validate_and_checkpoint(None, ema_bpd)
        self.progress.seconds = self._elapsed()
        self._segment_start = None
        return self.progress

    def _validate_and_checkpoint(self, bar, train_bpd: float | None) -> None:
        metrics = self.validation_metrics()
        objective = metrics["val_objective"]
        best = objective < self.progress.best_val_bpd
        if best:
            self.progress.best_val_bpd = objective
        self.history.append(
            {
                "step": self.progress.step,
                "epoch": self.progress.epoch,
                "train_bpd": train_bpd,
                **metrics,
                "seconds": self._elapsed(),
            }
        )
        self._checkpoint(best=best)
        message = f"step {self.progress.step}: validation bpd {metrics['val_bpd']:.4f}"
        if "val_hinge" in metrics:
            message += (
                f", hinge {metrics['val_hinge']:.4f}, {100 * metrics['val_beats_transformed']:.1f}% beat their "
                f"{self.config.negative.transform}, objective {objective:.4f}"
            )
        message += " (best)" if best else ""
        (bar.write if bar is not None else lambda m: print(m, file=sys.stderr))(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodgate-train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML or TOML run config (see configs/)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="resume from a checkpoint; bare --resume takes <run dir>/last.pt if there is one, else starts fresh",
    )
    parser.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    parser.add_argument("--out-dir", help="override the config's run directory")
    parser.add_argument("--threads", type=int, help="override the config's torch CPU threads (1 on a shared machine)")
    parser.add_argument("--no-progress", action="store_true", help="no live bar (logs, CI); validation lines stay")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    if args.out_dir:
        config.out_dir = args.out_dir
    if args.threads:
        config.train.threads = args.threads
    return run_training(Trainer, config, args.resume, args.max_minutes, "oodgate-train", progress=not args.no_progress)


def run_training(
    trainer_type: type[Trainer],
    config: RunConfig,
    resume_arg: str | None,
    max_minutes: float | None,
    prog: str,
    progress: bool = True,
) -> int:
    """The shared CLI body of every trainer: data, resume, signals, fit, and exit codes.

    ``resume_arg``: None (fresh), "auto" (``<run dir>/last.pt`` if there is one) or a path.
    Exit codes: 0 done or stopped cleanly, 2 no data / nothing to resume, 3 diverged.
    """
    try:
        images = load_training_images(config)
    except DatasetError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    slices = split_training_set(images, config.data.slices)
    resume = None
    if resume_arg:
        resume = config.run_dir / LAST_CHECKPOINT if resume_arg == "auto" else Path(resume_arg)
        if not resume.exists():
            if resume_arg != "auto":
                print(f"{prog}: nothing to resume at {resume}", file=sys.stderr)
                return 2
            print(f"no checkpoint at {resume}; starting fresh", file=sys.stderr)
            resume = None
    try:
        trainer = trainer_type(config, slices, resume=resume)
    except IncompatibleCheckpoint as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2

    def request_stop(signum, frame):  # finish the step, checkpoint, exit
        trainer.stop_requested = True

    trainer.show_progress = progress
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    c, h, w = trainer.input_shape
    print(
        f"training {config.name} on {len(slices.train)} images of {c}x{h}x{w} ({'RGB' if c == 3 else 'gray'}) "
        f"on {trainer.device}; "
        f"validation {len(slices.validation)}, held out {len(slices.holdout)}; checkpoints in {config.run_dir}",
        file=sys.stderr,
    )
    try:
        progress = trainer.fit(max_minutes=max_minutes)
    except TrainingDiverged as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 3
    what = "objective (bpd + hinge)" if config.negative is not None else "bpd"
    print(f"stopped at step {progress.step}; best validation {what} {progress.best_val_bpd:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
