"""The training loop on a tiny synthetic set: it learns, resumes, and refuses to write broken checkpoints."""

import numpy as np
import pytest
import torch
import yaml

from service.artifact import bits_per_dim
from training.config import NegativeSpec, RunConfig, load_config
from training.data import Slices
from training.flows import dequantize
from training.train import (
    IncompatibleCheckpoint,
    Trainer,
    TrainingDiverged,
    evaluate_negative,
    load_checkpoint,
    main,
    model_from_checkpoint,
    negative_terms,
)


def tiny_config(tmp_path, **train) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "tiny",
            "model": {"levels": 2, "steps": 1, "hidden": 8},
            "train": {
                "batch_size": 16,
                "lr": 5e-3,
                "warmup_steps": 5,
                "epochs": 2,
                "val_every": 4,
                "checkpoint_every": 2,
                "threads": 1,
                **train,
            },
            "out_dir": str(tmp_path / "run"),
        }
    )


def blob_slices(n=96, seed=0) -> Slices:
    """Smooth blobs: far from uniform noise, so a flow that learns drops well below 8 bpd."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:8, :8]
    centres = rng.uniform(2, 6, size=(n, 2))
    images = 200 * np.exp(-((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) / 6)
    images = images.astype(np.uint8)[:, None]
    return Slices(
        train=images[:64],
        validation=images[64:80],
        holdout=images[80:],
        ranges={"train": (0, 64), "validation": (64, 80), "holdout": (80, 96)},
    )


def test_training_lowers_bpd_and_writes_state_dict_checkpoints(tmp_path):
    config = tiny_config(tmp_path)
    trainer = Trainer(config, blob_slices())
    before = trainer.validate()
    progress = trainer.fit()
    assert progress.step == 8  # 2 epochs x 4 batches
    assert progress.best_val_bpd < before - 0.5
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")  # weights_only: no pickled objects
    assert set(checkpoint) >= {"model", "optimizer", "step", "config", "input_shape", "history"}
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["model"].values())
    flow, loaded_config, _ = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert loaded_config.name == "tiny" and flow.dims == 64


def test_resume_continues_where_it_stopped(tmp_path):
    slices = blob_slices()
    first = Trainer(tiny_config(tmp_path, max_steps=3, checkpoint_every=1), slices)
    first.fit()
    resumed = Trainer(tiny_config(tmp_path, max_steps=6), slices, resume=tmp_path / "run" / "last.pt")
    assert resumed.progress.step == 3
    assert resumed.progress.seconds > 0  # wall time carries over resumes
    torch.testing.assert_close(resumed.model.state_dict(), first.model.state_dict())
    first_seconds = resumed.progress.seconds
    progress = resumed.fit()
    assert progress.step == 6 and progress.seconds > first_seconds


def test_non_finite_loss_stops_without_writing_a_checkpoint(tmp_path):
    config = tiny_config(tmp_path)
    trainer = Trainer(config, blob_slices())
    trainer._initialize()
    with torch.no_grad():
        trainer.model.top_prior.log_std.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        trainer.fit()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cli_reports_a_missing_dataset_clearly(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"source": "fashion-mnist", "path": str(tmp_path / "none")}}))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none") in err and "dataset-fashion-mnist" in err


def test_configs_in_the_repo_are_valid():
    config = load_config("configs/fashion-glow.yaml")
    assert config.name == "fashion-glow" and config.data.slices.holdout == 5000
    upright = load_config("configs/fashion-glow-upright.yaml")  # the default model's fine-tune stage
    assert upright.negative is not None and upright.init_from == "runs/fashion-glow/best.pt"
    assert (upright.name, upright.version, upright.model, upright.data) == (
        config.name,
        config.version,
        config.model,
        config.data,
    )


@pytest.mark.gpu
def test_training_step_on_cuda_with_mixed_precision(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, device="cuda", amp=True, max_steps=4), blob_slices())
    assert trainer.device.type == "cuda"
    progress = trainer.fit()
    assert progress.step == 4 and np.isfinite(progress.best_val_bpd)


def test_learning_rate_warms_up_holds_then_decays_to_zero(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, warmup_steps=4, max_steps=20, decay_start=10), blob_slices())
    factors = [trainer._lr_factor(step) for step in range(20)]
    assert factors[0] == 0.25 and factors[3] == 1.0 and factors[9] == 1.0
    assert factors[10] == 1.0 and factors[15] == 0.5 and factors[19] == 0.1
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))


def top_heavy_slices(n=96, seed=0) -> Slices:
    """Blobs in the upper half only: upright and upside-down images differ, as clothes do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:8, :8]
    centres = np.stack([rng.uniform(1.5, 3.5, n), rng.uniform(2, 6, n)], axis=1)
    images = 200 * np.exp(-((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) / 4)
    images = images.astype(np.uint8)[:, None]
    return Slices(
        train=images[:64],
        validation=images[64:80],
        holdout=images[80:],
        ranges={"train": (0, 64), "validation": (64, 80), "holdout": (80, 96)},
    )


def test_negative_terms_are_the_hinge_of_two_separate_passes(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), top_heavy_slices())
    trainer._initialize()
    model = trainer.model.eval()
    spec = NegativeSpec(margin_bpd=0.4)
    x = dequantize(torch.from_numpy(top_heavy_slices().validation))
    with torch.no_grad():
        upright, flipped, hinge = negative_terms(model, x, spec)

        def bpd(batch):
            log_pz, log_det = model(batch)
            return bits_per_dim(log_pz.sum(1) + log_det.sum(1), model.dims)

        torch.testing.assert_close(upright, bpd(x))
        torch.testing.assert_close(flipped, bpd(x.flip(2)))
        torch.testing.assert_close(hinge, torch.clamp(0.4 - (bpd(x.flip(2)) - bpd(x)), min=0))


def test_negative_training_teaches_the_flow_which_way_is_up(tmp_path):
    """Same data, seed and steps; the hinge term is the only difference."""
    spec = NegativeSpec(margin_bpd=0.5)
    slices = top_heavy_slices()
    hinges = {}
    for name, negative in (("plain", None), ("negative", spec)):
        config = tiny_config(tmp_path / name, epochs=4)
        config.negative = negative
        trainer = Trainer(config, slices)
        trainer.fit()
        hinges[name] = evaluate_negative(trainer.model, slices.validation, torch.device("cpu"), spec)["hinge"]
    assert hinges["negative"] < 0.6 * hinges["plain"], hinges
    history = load_checkpoint(tmp_path / "negative" / "run" / "last.pt")["history"]
    last = history[-1]  # checkpoints were picked by the objective, and it is bpd + weight * hinge
    assert last["val_objective"] == pytest.approx(last["val_bpd"] + spec.weight * last["val_hinge"])
    assert 0.0 <= last["val_beats_transformed"] <= 1.0


def test_init_from_starts_from_the_parent_weights_and_records_it(tmp_path):
    slices = blob_slices()
    parent = Trainer(tiny_config(tmp_path / "parent", max_steps=4), slices)
    parent.fit()
    config = tiny_config(tmp_path / "child", max_steps=2)
    config.init_from = str(tmp_path / "parent" / "run" / "last.pt")
    child = Trainer(config, slices)
    assert child.progress.step == 0
    torch.testing.assert_close(child.model.state_dict(), parent.model.state_dict())
    child.fit()
    lineage = load_checkpoint(tmp_path / "child" / "run" / "last.pt")["init_from"]
    assert lineage["steps"] == 4 and lineage["name"] == "tiny" and lineage["checkpoint"] == config.init_from
    resumed = Trainer(config, slices, resume=tmp_path / "child" / "run" / "last.pt")
    assert resumed.init_from == lineage  # a resumed fine-tune keeps its lineage, and is not re-initialised


def test_init_from_refuses_another_architecture_or_slicing(tmp_path, capsys):
    slices = blob_slices()
    Trainer(tiny_config(tmp_path / "parent", max_steps=1), slices).fit()
    parent = str(tmp_path / "parent" / "run" / "last.pt")
    wider = tiny_config(tmp_path / "wider")
    wider.model.hidden = 16
    wider.init_from = parent
    with pytest.raises(IncompatibleCheckpoint, match="architecture"):
        Trainer(wider, slices)
    moved = Slices(slices.train, slices.validation, slices.holdout, {**slices.ranges, "holdout": (70, 86)})
    same = tiny_config(tmp_path / "same")
    same.init_from = parent
    with pytest.raises(IncompatibleCheckpoint, match="slices"):
        Trainer(same, moved)
    same.init_from = str(tmp_path / "nothing.pt")
    with pytest.raises(IncompatibleCheckpoint, match="no checkpoint"):
        Trainer(same, slices)
