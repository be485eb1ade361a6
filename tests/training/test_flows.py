"""Every layer and every architecture is invertible and reports the right log-det.

The reference is ``log|det J|`` from ``torch.autograd.functional.jacobian`` on tiny
inputs in float64; parameters are perturbed away from their identity
initialisation first, or a zero-initialised coupling would pass trivially.
"""

import pytest
import torch

from service.artifact import bits_per_dim
from training.architectures import FlowConfig, build_flow
from training.flows import (
    ActNorm,
    Center,
    Coupling,
    InvertibleConv1x1,
    Logit,
    Sequential,
    Squeeze,
    coupling_masks,
    initialize_actnorms,
)


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(fn, x)
    dims = x.numel()
    return torch.linalg.slogdet(jac.reshape(dims, dims))[1]


SHAPE = (4, 4, 4)
LAYERS = {
    "actnorm": lambda: ActNorm(4),
    "invconv-lu": lambda: InvertibleConv1x1(4, lu=True, seed=1),
    "invconv-plain": lambda: InvertibleConv1x1(4, lu=False, seed=2),
    "affine-checkerboard": lambda: Coupling(SHAPE, "checkerboard", 0, hidden=8),
    "affine-channel": lambda: Coupling(SHAPE, "channel", 1, hidden=8),
    "affine-horizontal": lambda: Coupling(SHAPE, "horizontal", 0, hidden=8),
    "affine-cycle": lambda: Coupling(SHAPE, "cycle", 2, hidden=8),
    "affine-bottleneck": lambda: Coupling(SHAPE, "checkerboard", 1, hidden=8, bottleneck=3),
    "additive-channel": lambda: Coupling(SHAPE, "channel", 0, hidden=8, additive=True),
    "squeeze": Squeeze,
    "center": Center,
    "logit": lambda: Logit(0.05),
    "sequential": lambda: Sequential(ActNorm(4), InvertibleConv1x1(4, seed=3), Coupling(SHAPE, "channel", 0, hidden=8)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_is_invertible_with_exact_logdet(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    perturb(layer)
    x = torch.rand(3, *SHAPE, dtype=torch.float64) * 0.9 + 0.05
    y, logdet = layer(x)
    assert logdet.shape == (3,)
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-10, rtol=0)
    for i in range(3):
        expected = jacobian_logdet(lambda xi: layer(xi.unsqueeze(0))[0].squeeze(0), x[i])
        torch.testing.assert_close(logdet[i], expected, atol=1e-8, rtol=1e-8)


ARCHITECTURES = {
    "glow-affine-lu": FlowConfig(levels=2, steps=2, hidden=8),
    "glow-additive-plain": FlowConfig(levels=2, steps=2, hidden=8, coupling="additive", lu=False),
    "glow-checkerboard-bottleneck": FlowConfig(levels=2, steps=2, hidden=8, mask="checkerboard", bottleneck=4),
    "realnvp-cycle-logit": FlowConfig(
        architecture="realnvp", levels=2, steps=4, hidden=8, mask="cycle", preprocess="logit"
    ),
    "realnvp-horizontal": FlowConfig(architecture="realnvp", levels=1, steps=3, hidden=8, mask="horizontal"),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_is_invertible_with_exact_logdet_per_level(name):
    torch.manual_seed(0)
    config = ARCHITECTURES[name]
    flow = build_flow(config, (1, 4, 4)).double()
    v = torch.rand(5, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05
    assert initialize_actnorms(flow, lambda: flow(v)) >= 0
    perturb(flow)
    result = flow.transform(v)
    assert result.log_pz_levels.shape == (5, config.levels)
    assert result.log_det_levels.shape == (5, config.levels)
    torch.testing.assert_close(flow.inverse(result.latents), v, atol=1e-10, rtol=0)
    torch.testing.assert_close(flow.unstandardize_and_invert(flow.standardize(result.latents)), v, atol=1e-10, rtol=0)

    def to_latents(x):
        return torch.cat([z.reshape(-1) for z in flow.transform(x.unsqueeze(0)).latents])

    for i in range(2):
        expected = jacobian_logdet(to_latents, v[i])
        torch.testing.assert_close(result.log_det[i], expected, atol=1e-8, rtol=1e-8)


def test_split_prior_is_log_pz_not_log_det():
    """Changing only a split prior's parameters moves log_pz and leaves log_det alone."""
    flow = build_flow(FlowConfig(levels=2, steps=1, hidden=8), (1, 4, 4)).double()
    v = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    initialize_actnorms(flow, lambda: flow(v))
    before = flow.transform(v)
    with torch.no_grad():
        flow.levels[0].split.prior.conv.bias.add_(0.5)
    after = flow.transform(v)
    torch.testing.assert_close(after.log_det_levels, before.log_det_levels)
    assert not torch.allclose(after.log_pz_levels[:, 0], before.log_pz_levels[:, 0])
    torch.testing.assert_close(after.log_pz_levels[:, 1], before.log_pz_levels[:, 1])


def test_latent_energy_is_the_mean_squared_standardized_latent_per_level():
    """Known answers: a draw from the flow's own prior has energy near 1 at every level, a zeroed one 0."""
    torch.manual_seed(0)
    flow = build_flow(FlowConfig(levels=2, steps=2, hidden=8), (1, 8, 8)).double()
    v = torch.rand(64, 1, 8, 8, dtype=torch.float64) * 0.9 + 0.05
    initialize_actnorms(flow, lambda: flow(v))
    perturb(flow, scale=0.05)
    result = flow.transform(v)
    eps = flow.standardize(result.latents)
    expected = torch.stack([e.pow(2).flatten(1).mean(dim=1) for e in eps], dim=1)
    torch.testing.assert_close(result.latent_energy_levels, expected)

    shapes = flow.latent_shapes()
    noise = [
        torch.randn(4096, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        for i, shape in enumerate(shapes)
    ]
    drawn = flow.transform(flow.unstandardize_and_invert(noise)).latent_energy_levels
    units = torch.tensor([float(torch.Size(shape).numel()) for shape in shapes], dtype=torch.float64)
    # the mean over images of a mean of m squared standard normals: 1, standard error sqrt(2 / m / 4096)
    assert torch.all((drawn.mean(dim=0) - 1).abs() < 5 * torch.sqrt(2 / units / 4096))
    zeroed = flow.transform(
        flow.unstandardize_and_invert([torch.zeros(1, *shape, dtype=torch.float64) for shape in shapes])
    )
    torch.testing.assert_close(
        zeroed.latent_energy_levels, torch.zeros(1, len(shapes), dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_bpd_follows_the_design_formula():
    dims = 784
    log_px = torch.tensor([0.0, -1000.0, 500.0], dtype=torch.float64)
    expected = (-log_px + dims * torch.log(torch.tensor(256.0, dtype=torch.float64))) / (
        dims * torch.log(torch.tensor(2.0, dtype=torch.float64))
    )
    torch.testing.assert_close(bits_per_dim(log_px, dims), expected)
    # A density of 1 on (0,1)^D is the uniform distribution over pixel values: exactly 8 bits.
    assert bits_per_dim(0.0, dims) == pytest.approx(8.0)


def test_cycle_mask_updates_each_quadrant_from_the_previous_one():
    quadrant_sums = []
    for index in range(4):
        cond, target = coupling_masks("cycle", (1, 4, 4), index)
        assert (cond * target).sum() == 0
        quadrant_sums.append((cond.sum().item(), target.sum().item()))
        next_cond, _ = coupling_masks("cycle", (1, 4, 4), index + 1)
        torch.testing.assert_close(target, next_cond)
    assert quadrant_sums == [(4.0, 4.0)] * 4


def test_actnorm_init_is_explicit_and_survives_load_state_dict():
    flow = build_flow(FlowConfig(levels=1, steps=2, hidden=8), (1, 4, 4))
    v = torch.rand(16, 1, 4, 4) * 3 + 2
    out_before = flow(v)  # forward never initialises by itself
    assert not any(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm))
    initialize_actnorms(flow, lambda: flow(v))
    first = next(m for m in flow.modules() if isinstance(m, ActNorm))
    squeezed = Squeeze()(v - 0.5)[0]
    normalised, _ = first(squeezed)
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    clone = build_flow(FlowConfig(levels=1, steps=2, hidden=8), (1, 4, 4))
    clone.load_state_dict(flow.state_dict())
    assert all(bool(m.initialized) for m in clone.modules() if isinstance(m, ActNorm))
    assert initialize_actnorms(clone, lambda: clone(v * 10)) == 0
    torch.testing.assert_close(clone(v)[1], flow(v)[1])
    assert out_before[1].shape == (16, 1)
