"""The training loop on a tiny synthetic set: it learns, resumes, and refuses to write broken checkpoints."""

import numpy as np
import pytest
import torch
import yaml

from training.checkpoints import IncompatibleCheckpoint, load_checkpoint, model_from_checkpoint
from training.config import NegativeSpec, load_config
from training.data import Slices
from training.objective import evaluate_negative
from training.train import Trainer, TrainingDiverged, main

from .tiny_runs import blob_slices, tiny_config, top_heavy_slices


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
    shifted = load_config("configs/fashion-glow-shift.yaml")  # the third stage: fine-tunes the bundle itself
    assert shifted.init_from == "models/fashion-glow/1" and shifted.augment.shift_pixels == 2
    assert shifted.negative == upright.negative and shifted.model == config.model
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


def test_a_bundle_can_be_the_parent_of_a_fine_tune_with_shift_augmentation(tmp_path, monkeypatch):
    import training.train as train_module
    from service.artifact import TrainingData
    from training.augment import AugmentSpec
    from training.data import sha256_array
    from training.export import export_bundle
    from training.flows import dequantize
    from training.weights import flow_from_bundle

    slices = blob_slices()
    parent = Trainer(tiny_config(tmp_path / "parent", max_steps=4), slices)
    parent.fit()
    record = parent.config
    data = TrainingData(
        source=record.data.source,
        split="train",
        path=record.data.path,
        sha256=sha256_array(slices.train),
        slices=slices.ranges,
        holdout_sha256=sha256_array(slices.holdout),
    )
    bundle = tmp_path / "models" / "tiny" / "1"
    training = {"config": record.train.model_dump(mode="json"), "steps": 4, "best_validation_bpd": 5.0}
    export_bundle(
        parent.model, bundle, name="tiny", version="1", architecture=record.model.model_dump(mode="json"),
        training=training, data=data,
    )  # fmt: skip

    config = tiny_config(tmp_path / "child", max_steps=3)
    config.init_from, config.augment = str(bundle), AugmentSpec(shift_pixels=1)
    child = Trainer(config, slices)
    pixels = dequantize(torch.from_numpy(slices.validation))
    with torch.no_grad():  # the child starts from exactly what the bundle serves
        torch.testing.assert_close(
            child.model.transform(pixels).log_px, flow_from_bundle(bundle).transform(pixels).log_px
        )
    shifts = []
    monkeypatch.setattr(train_module, "random_shift", lambda x, k: shifts.append(k) or x)
    child.fit()
    assert shifts == [1, 1, 1]  # every training batch, and nothing else (validation sees the images unmoved)
    lineage = load_checkpoint(tmp_path / "child" / "run" / "last.pt")["init_from"]
    assert lineage["checkpoint"] == str(bundle) and lineage["steps"] == 4 and lineage["best_val_bpd"] == 5.0
