"""The training loop on a tiny synthetic set: it learns, resumes, and refuses to write broken checkpoints."""

import numpy as np
import pytest
import torch
import yaml

from training.config import RunConfig, load_config
from training.data import Slices
from training.train import Trainer, TrainingDiverged, load_checkpoint, main, model_from_checkpoint


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
