"""The training objective: the hinge against a transform is the hinge of two separate passes."""

import torch

from service.artifact import bits_per_dim
from training.config import NegativeSpec
from training.flows import dequantize
from training.objective import negative_terms
from training.train import Trainer

from .tiny_runs import tiny_config, top_heavy_slices


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
