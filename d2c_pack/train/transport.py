"""The SiT linear-interpolant transport: training objective and ODE sampler.

Convention of the official SiT (``path_type="Linear"``, ``prediction="velocity"``): t = 0 is
noise x₀ ~ N(0, I), t = 1 is data x₁; x_t = t·x₁ + (1 − t)·x₀ and the target velocity is
u = x₁ − x₀, with t ~ U[0, 1]. The network's first ``C`` output channels are the velocity
(when σ is learned the remaining channels are ignored, as SiT does).
"""

from __future__ import annotations

import torch

from d2c_pack.models import DiT


def interpolate(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Point x_t on the straight path from noise x₀ to data x₁ at times t (N,), and its velocity u."""
    t = t.view(-1, *([1] * (x1.dim() - 1)))  # (N, 1, 1, 1)
    return t * x1 + (1 - t) * x0, x1 - x0


def predict_velocity(model: DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x, t, y)[:, : x.shape[1]]  # (N, C, H, W)


def velocity_loss(model: DiT, x1: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity error at t ~ U[0, 1], with noise and t from the global RNG."""
    x0 = torch.randn_like(x1)
    t = torch.rand(x1.shape[0], device=x1.device)
    xt, ut = interpolate(x1, x0, t)
    return ((predict_velocity(model, xt, t, y) - ut.to(torch.float32)) ** 2).mean()


@torch.no_grad()
def euler_ode_sample(
    model: DiT,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_steps: int = 50,
    cfg_scale: float = 1.0,
) -> torch.Tensor:
    """Integrates dx/dt = v(x, t, y) from t = 0 (``noise``) to t = 1 with ``num_steps`` Euler steps.

    With ``cfg_scale > 1`` the batch is doubled with the null class (``model.y_embedder.num_classes``)
    and the velocity is guided by ``forward_with_cfg``.
    """
    guided = cfg_scale > 1.0
    x = torch.cat([noise, noise]) if guided else noise  # (N or 2N, C, H, W)
    y = torch.cat([labels, torch.full_like(labels, model.y_embedder.num_classes)]) if guided else labels
    times = torch.linspace(0.0, 1.0, num_steps + 1, device=noise.device)
    for t0, t1 in zip(times[:-1], times[1:]):
        t = t0.expand(x.shape[0])  # (N,)
        if guided:
            v = model.forward_with_cfg(x, t, y, cfg_scale)[:, : x.shape[1]]
        else:
            v = predict_velocity(model, x, t, y)
        x = x + (t1 - t0) * v
    return x[: noise.shape[0]]
