"""Activation normalisation (Glow, section 3.1) with an explicit data init.

The data-dependent initialisation is a separate step (:func:`initialize_actnorms`)
run once on a batch before training. ``forward`` never branches on data or on
whether it was initialised, so tracing and ONNX export see one fixed graph. The
``initialized`` flag is a persistent buffer, so it survives ``load_state_dict``
and a resumed run does not re-initialise trained scales.
"""

from __future__ import annotations

import torch
from torch import nn

from training.flows.base import Transform


class ActNorm(Transform):
    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize_from(self, x: torch.Tensor) -> None:
        """Set bias and scale so that this batch comes out zero-mean, unit-variance."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = (x + self.bias) * torch.exp(self.log_scale)
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


@torch.no_grad()
def initialize_actnorms(model: nn.Module, run_forward) -> int:
    """Initialise every uninitialised ActNorm in ``model`` from one forward pass.

    ``run_forward`` is a callable that pushes a batch through the model; a
    forward pre-hook on each ActNorm sees its real input and initialises it
    before the layer runs, so later layers see normalised activations. Returns
    how many layers were initialised.
    """
    count = 0
    handles = []

    def hook(module: ActNorm, args):
        nonlocal count
        if not bool(module.initialized):
            module.initialize_from(args[0])
            count += 1

    for module in model.modules():
        if isinstance(module, ActNorm):
            handles.append(module.register_forward_pre_hook(hook))
    try:
        run_forward()
    finally:
        for handle in handles:
            handle.remove()
    return count


def all_actnorms_initialized(model: nn.Module) -> bool:
    return all(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
