"""Training run configuration, read from a YAML or TOML file checked into ``configs/``."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.architectures import FlowConfig
from training.augment import AugmentSpec
from training.data import FASHION_MNIST_DIR, SliceSpec, load_images, test_positions


class DataConfig(BaseModel):
    """Where the training images come from; every field is documented in configs/README.md."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["fashion-mnist", "folder", "npz", "idx", "cifar"] = Field(
        "fashion-mnist",
        description="fashion-mnist: the IDX folder of Debian's dataset-fashion-mnist (train split); folder: image "
        "files under a directory, recursive, sorted by path; npz: an array 'images' (or 'x', or the only one); "
        "idx: one IDX images file; cifar: CIFAR-10/100 binary batches (a .bin file or a folder of them)",
    )
    path: str = Field(str(FASHION_MNIST_DIR), description="the folder or file the source reads")
    channels: Literal[1, 3] | None = Field(
        None,
        description="1 (gray) or 3 (RGB); None: as the data is (a folder is RGB if any image holds colour). "
        "Set, the images are converted: gray repeated to RGB, RGB to ITU-R 601 luma",
    )
    size: tuple[int, int] | None = Field(
        None, description="H, W to resize every image to (LANCZOS); None: as the data is (a folder must agree)"
    )
    test_source: Literal["fashion-mnist", "folder", "npz", "idx", "cifar"] | None = Field(
        None, description="reader of the in-distribution test set (default: the same as source)"
    )
    test_path: str | None = Field(
        None,
        description="the in-distribution test set, only ever measured on (test bpd, realized FPR); "
        "fashion-mnist reads its own test split when this is unset",
    )
    test_every: int | None = Field(
        None,
        ge=2,
        description="no separate test set: every k-th image of path (index % k == 0, in the order read) is the "
        "test set, never trained or calibrated on, and the others are the training split",
    )
    slices: SliceSpec = SliceSpec()

    def load(self) -> np.ndarray:
        """The training split as uint8 [N, C, H, W], read and converted as configured."""
        images = load_images(self.source, self.path, self.channels, self.size, split="train")
        if self.test_every:
            images = images[~test_positions(len(images), self.test_every)]
        return images

    def load_test(self, input_shape: tuple[int, int, int] | None = None) -> np.ndarray | None:
        """The in-distribution test set, fitted to ``input_shape`` (the model's); None when there is none."""
        source = self.test_source or self.source
        channels, size = (input_shape[0], tuple(input_shape[1:])) if input_shape else (self.channels, self.size)
        if self.test_every:
            images = load_images(self.source, self.path, channels, size, split="train")
            return images[test_positions(len(images), self.test_every)]
        if self.test_path is None and source != "fashion-mnist":
            return None
        return load_images(source, self.test_path or self.path, channels, size, split="test")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(500, ge=0, description="linear learning-rate warm-up from 0")
    grad_clip: float = Field(50.0, gt=0, description="max global gradient norm")
    decay_start: int | None = Field(
        None, ge=0, description="from this step, decay lr linearly to 0 at the last step (a pure function of the step)"
    )
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    val_every: int = Field(500, ge=1, description="validation bpd every N steps (and at each epoch end)")
    checkpoint_every: int = Field(200, ge=1, description="write last.pt every N steps")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    num_val_images: int | None = Field(None, ge=1, description="cap on validation images per evaluation")


class NegativeSpec(BaseModel):
    """Negative training against one known nuisance transform (Kirichenko et al. 2020, section 6).

    A flow fitted by maximum likelihood alone barely knows which way is up: on
    FashionMNIST about 3% of upright images score *worse* than the same image upside
    down, which caps how many upside-down inputs the ``orientation`` score can flag.
    The hinge ``weight * relu(margin_bpd - (bpd(t(x)) - bpd(x)))`` asks every training
    image to beat its transformed copy by ``margin_bpd`` and stops pushing once it does,
    so the likelihood of transformed images is never driven down without bound (the
    instability of plain likelihood minimisation). It teaches that one transform only:
    the paper's Figure 5 shows negative training does not carry over to other OOD data.
    """

    model_config = ConfigDict(extra="forbid")

    transform: Literal["vflip"] = Field("vflip", description="the transform to train against: vflip = upside down")
    margin_bpd: float = Field(0.3, gt=0, description="bits/dim by which x should beat t(x); no push beyond it")
    weight: float = Field(1.0, gt=0, description="weight of the mean hinge next to the mean bpd in the loss")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field("1", pattern=r"^[A-Za-z0-9._-]+$")
    data: DataConfig = DataConfig()
    model: FlowConfig = FlowConfig()
    train: TrainConfig = TrainConfig()
    out_dir: str | None = Field(None, description="checkpoints go here (default runs/<name>)")
    init_from: str | None = Field(
        None,
        description="fine-tune: start from this checkpoint's weights (same architecture, data and slices); "
        "optimizer, schedule and step count start fresh",
    )
    negative: NegativeSpec | None = Field(None, description="negative training against a transform (off if absent)")
    augment: AugmentSpec | None = Field(
        None, description="training-time augmentation (training.augment; off if absent)"
    )

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


def load_config(path: str | Path, config_type: type[RunConfig] = RunConfig) -> RunConfig:
    """Read a YAML or TOML run config as ``config_type``; a missing or invalid file exits with the reason."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"config not found: {path}")
    text = path.read_text()
    raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    try:
        return config_type.model_validate(raw or {})
    except ValidationError as exc:
        raise SystemExit(f"invalid config {path}:\n{exc}") from exc
