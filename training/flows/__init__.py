"""Flow layers, all keeping the :class:`~training.flows.base.Transform` contract."""

from training.flows.actnorm import ActNorm, all_actnorms_initialized, initialize_actnorms
from training.flows.base import Sequential, Transform
from training.flows.coupling import Coupling
from training.flows.invconv import InvertibleConv1x1, freeze_invertible_convs
from training.flows.masks import MASK_TYPES, coupling_masks
from training.flows.preprocess import Center, Logit, dequantize, make_preprocess
from training.flows.reshape import ConditionalPrior, LearnedPrior, Split, Squeeze

__all__ = [
    "ActNorm",
    "Center",
    "ConditionalPrior",
    "Coupling",
    "InvertibleConv1x1",
    "LearnedPrior",
    "Logit",
    "MASK_TYPES",
    "Sequential",
    "Split",
    "Squeeze",
    "Transform",
    "all_actnorms_initialized",
    "coupling_masks",
    "dequantize",
    "freeze_invertible_convs",
    "initialize_actnorms",
    "make_preprocess",
]
