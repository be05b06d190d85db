"""The SiT linear-interpolant transport: training objective, classifier-free guidance and samplers.

Convention of the official SiT (``path_type="Linear"``, ``prediction="velocity"``): t = 0 is
noise x₀ ~ N(0, I), t = 1 is data x₁; x_t = t·x₁ + (1 − t)·x₀ and the target velocity is
u = x₁ − x₀, with t ~ U[0, 1]. The network's first ``C`` output channels are the velocity
(when σ is learned the remaining channels are ignored, as SiT does).

Samplers integrate from t = 0 (noise) to t = 1 (data): Euler and Heun on the probability-flow
ODE dx/dt = v(x, t) (REPA's ``euler_sampler``), SiT's default adaptive ODE solver (torchdiffeq's
``dopri5``), and Euler–Maruyama on SiT's SDE (see :func:`euler_maruyama_sample`). The fixed-step
samplers build their time grids in float64, as REPA does: a float32 grid moves grid points by
~1e-8, enough to carry one across a guidance interval's edge. The grid and the guidance scale of
each step are host floats computed once (:class:`Schedule`), so that a step of euler, heun or
euler-maruyama never waits for the device: no tensor is read back, and the SDE's Brownian
increments are drawn by generators on the samples' device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import torch

from d2c_pack.core.errors import require
from d2c_pack.diffusion.sampling import GuidanceInterval, Sampling
from d2c_pack.models.dit import DiT

# SiT's defaults for its ODE sampler (--atol, --rtol in train_utils.parse_ode_args).
DOPRI5_ATOL = 1e-6
DOPRI5_RTOL = 1e-3
# SiT's default for its SDE sampler (--last-step-size): the SDE stops at t = 1 − 0.04, where the
# score's variance 1 − t is still away from 0, and one noise-free step covers the rest.
LAST_STEP_SIZE = 0.04
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass
class Condition:
    """What a batch is sampled for: class labels and, for text-conditioned models, text embeddings."""

    labels: torch.Tensor  # (N,)
    text: torch.Tensor | None = None  # (N, L, D_text)
    text_mask: torch.Tensor | None = None  # (N, L)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: slice) -> Condition:
        return Condition(*(None if v is None else v[index] for v in (self.labels, self.text, self.text_mask)))

    def null(self, num_classes: int) -> Condition:
        """The unconditional counterpart: the null class (``num_classes``) and the null text (zeros, zero mask)."""
        text = None if self.text is None else torch.zeros_like(self.text)
        mask = None if self.text_mask is None else torch.zeros_like(self.text_mask)
        return Condition(torch.full_like(self.labels, num_classes), text, mask)

    def to(self, device: torch.device | str) -> Condition:
        return Condition(*(None if v is None else v.to(device) for v in (self.labels, self.text, self.text_mask)))

    def cat(self, other: Condition) -> Condition:
        """This batch followed by ``other``'s."""
        text = None if self.text is None else torch.cat([self.text, other.text])  # (N + M, L, D_text)
        mask = None if self.text_mask is None else torch.cat([self.text_mask, other.text_mask])  # (N + M, L)
        return Condition(torch.cat([self.labels, other.labels]), text, mask)


def as_condition(cond: Condition | torch.Tensor) -> Condition:
    """A bare label tensor is a condition without text."""
    return cond if isinstance(cond, Condition) else Condition(cond)


def time_grid(num_points: int, last_step_size: float = 0.0, *, repa: bool = False) -> torch.Tensor:
    """``num_points`` evenly spaced float64 SiT times from 0 (noise) to 1 − ``last_step_size``.

    With ``repa=True`` the same grid as REPA builds it, in its time: linspace(1, last_step_size).
    """
    if repa:
        return torch.linspace(1.0, last_step_size, num_points, dtype=torch.float64)  # (num_points,)
    return torch.linspace(0.0, 1.0 - last_step_size, num_points, dtype=torch.float64)  # (num_points,)


def guidance_scales(sampling: Sampling, num_points: int, last_step_size: float = 0.0) -> list[float]:
    """The guidance scale at each point of :func:`time_grid`: ``sampling.cfg_scale`` inside its interval, 1 (none) elsewhere.

    Each point is compared in the interval's own time, on the grid as that convention builds it.
    """
    interval = sampling.guidance_interval
    times = time_grid(num_points, last_step_size, repa=interval.time == "repa").tolist()
    return [sampling.cfg_scale if interval.low <= t <= interval.high else 1.0 for t in times]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The fixed-step samplers' grid as host floats: SiT times (float64 grid), the guidance scale of a step
    starting at each, and the size of the SDE's final noise-free step (0 for the ODEs)."""

    times: tuple[float, ...]
    scales: tuple[float, ...]
    last_step_size: float = 0.0


def schedule(sampling: Sampling, last_step_size: float = LAST_STEP_SIZE) -> Schedule:
    """The grid ``sampling.sampler`` steps on: N + 1 points for euler and heun, N up to 1 − ``last_step_size`` for euler-maruyama.

    Computed once for a whole run, before any step: the steps read plain floats.
    """
    num_points, last = (sampling.steps, last_step_size) if sampling.sampler == "euler-maruyama" else (sampling.steps + 1, 0.0)
    return Schedule(tuple(time_grid(num_points, last).tolist()), tuple(guidance_scales(sampling, num_points, last)), last)


def interpolate(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Point x_t on the straight path from noise x₀ to data x₁ at times t (N,), and its velocity u."""
    t = t.view(-1, *([1] * (x1.dim() - 1)))  # (N, 1, 1, 1)
    return t * x1 + (1 - t) * x0, x1 - x0


def velocity_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training objective: mean squared error of the network's velocity channels (its first C) against u = x₁ − x₀."""
    return ((output[:, : target.shape[1]].float() - target) ** 2).mean()


def _forward(model: DiT, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
    # Models without text conditioning (official DiT/SiT, test stubs) take (x, t, y) only.
    if cond.text is None:
        out = model(x, t, cond.labels)
    else:
        out = model(x, t, cond.labels, cond.text, cond.text_mask)
    return out[:, : x.shape[1]].float()  # (N, C, H, W)


def velocity(
    model: DiT,
    x: torch.Tensor,
    t: float,
    cond: Condition,
    cfg_scale: float = 1.0,
    guidance_interval: GuidanceInterval | None = None,
    *,
    guided_channels: int | None = None,
) -> torch.Tensor:
    """The model's velocity at SiT time ``t`` (0 = noise, 1 = data), guided where asked.

    With ``cfg_scale > 1`` and ``t`` inside the closed ``guidance_interval`` (None: any t), classifier-free
    guidance v_u + s·(v_c − v_u) from one doubled batch: the conditional half, then the null class
    with the null text. Every channel is guided (REPA), or with ``guided_channels = 3`` only the
    first three, the rest conditional, as the official DiT/SiT ``forward_with_cfg`` (a DiT
    reproducibility quirk that SiT's published samples keep). Elsewhere one conditional pass.
    ``t`` is a host float: nothing here waits for the device.
    """
    times = torch.full((x.shape[0],), t, device=x.device)  # (N,)
    if cfg_scale <= 1.0 or (guidance_interval is not None and not guidance_interval.contains(t)):
        return _forward(model, x, times, cond)
    both = cond.cat(cond.null(model.y_embedder.num_classes))
    v_cond, v_null = _forward(model, torch.cat([x, x]), torch.cat([times, times]), both).chunk(2)  # (N, C, H, W) each
    guided = v_null + cfg_scale * (v_cond - v_null)
    if guided_channels is None:
        return guided
    return torch.cat([guided[:, :guided_channels], v_cond[:, guided_channels:]], dim=1)


@torch.no_grad()
def euler_ode_sample(
    model: DiT, noise: torch.Tensor, cond: Condition | torch.Tensor, sampling: Sampling = Sampling(), *, plan: Schedule | None = None
) -> torch.Tensor:
    """Integrates dx/dt = v(x, t) from t = 0 (``noise``) to t = 1 with N = ``sampling.steps`` Euler steps.

    N counts intervals: the grid has N + 1 points, as REPA's. A step is guided (``sampling.cfg_scale``)
    when its start is inside ``sampling.guidance_interval``. ``plan``: ``schedule(sampling)`` if
    already computed.
    """
    cond = as_condition(cond)
    plan = plan or schedule(sampling)
    x = noise.float()  # (N, C, H, W)
    for (t0, t1), scale in zip(itertools.pairwise(plan.times), plan.scales):
        x = x + (t1 - t0) * velocity(model, x, t0, cond, cfg_scale=scale, guided_channels=sampling.guided_channels)
    return x


@torch.no_grad()
def heun_ode_sample(
    model: DiT, noise: torch.Tensor, cond: Condition | torch.Tensor, sampling: Sampling = Sampling(), *, plan: Schedule | None = None
) -> torch.Tensor:
    """Heun's second-order method on dx/dt = v(x, t), t = 0 → 1: 2N − 1 network evaluations for N = ``sampling.steps``.

    N counts intervals, as in :func:`euler_ode_sample`. Each step averages the velocity
    at its start and at the Euler prediction of its end; the last step is plain Euler (as in EDM and
    REPA), so the network is never evaluated at the data end t = 1. As in REPA's ``euler_sampler``,
    a step is guided as a whole when its start is inside ``sampling.guidance_interval``: the corrector at the
    step's end takes the scale of its start, even where that end lies outside the interval.
    """
    cond = as_condition(cond)
    plan = plan or schedule(sampling)
    channels = sampling.guided_channels
    x = noise.float()  # (N, C, H, W)
    for step, ((t0, t1), scale) in enumerate(zip(itertools.pairwise(plan.times), plan.scales)):
        v0 = velocity(model, x, t0, cond, cfg_scale=scale, guided_channels=channels)  # (N, C, H, W)
        euler = x + (t1 - t0) * v0
        if step == sampling.steps - 1:
            x = euler
        else:
            x = x + (t1 - t0) * 0.5 * (v0 + velocity(model, euler, t1, cond, cfg_scale=scale, guided_channels=channels))
    return x


@torch.no_grad()
def dopri5_ode_sample(
    model: DiT,
    noise: torch.Tensor,
    cond: Condition | torch.Tensor,
    sampling: Sampling = Sampling(),
    *,
    atol: float = DOPRI5_ATOL,
    rtol: float = DOPRI5_RTOL,
) -> torch.Tensor:
    """SiT's default ODE sampler: torchdiffeq's adaptive Dormand–Prince 5(4) on dx/dt = v(x, t), t = 0 → 1.

    There is no step count: the solver picks its steps to keep the local error under
    atol + rtol·|x| (SiT's defaults), measured over the whole batch as in SiT, so the steps and
    hence a sample depend on the batch it is drawn in. (SiT's ``num_sampling_steps`` only sets how
    many interpolated points are returned along the path; the last, at t = 1, does not depend on it.)
    ``sampling.steps`` is ignored; guidance applies at the solver's times inside ``sampling.guidance_interval``.
    """
    cond = as_condition(cond)
    interval = sampling.guidance_interval

    def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Like SiT, the network is evaluated where the last step overshoots t = 1 (the solver
        # interpolates back); there guidance is what it is at t = 1.
        scale = sampling.cfg_scale if interval.contains(min(float(t), 1.0)) else 1.0
        return velocity(model, x, float(t), cond, cfg_scale=scale, guided_channels=sampling.guided_channels)

    ends = torch.tensor([0.0, 1.0], device=noise.device)  # float32, as SiT's linspace(t0, t1, num_steps)
    # One-element lists, as SiT passes them: the solver then does SiT's arithmetic to the bit (scalars round differently).
    odeint = require("torchdiffeq", "eval", "the dopri5 sampler").odeint
    return odeint(field, noise.float(), ends, method="dopri5", atol=[atol], rtol=[rtol])[-1]


@torch.no_grad()
def euler_maruyama_sample(
    model: DiT,
    noise: torch.Tensor,
    cond: Condition | torch.Tensor,
    sampling: Sampling = Sampling(sampler="euler-maruyama"),
    *,
    generator: Generators = None,
    plan: Schedule | None = None,
) -> torch.Tensor:
    """SiT's SDE sampler (``diffusion_form="sigma"``, ``diffusion_norm=1``, last step ``"Mean"``).

    On the linear path x_t = t·x₁ + (1 − t)·x₀ the noise is x₀ = x − t·v, so the score is
    s(x, t) = −E[x₀ | x_t]/(1 − t) = (t·v − x)/(1 − t). With the diffusion w(t) = 1 − t (σ_t), the SDE

        dx = [v + w(t)·s] dt + √(2·w(t)) dW,   t from 0 (noise) forwards to 1 (data)

    has the marginals of the probability-flow ODE dx/dt = v (its Fokker–Planck drift is
    v + w·s − ½·2w·s = v); on this path its drift simplifies to (1 + t)·v − x. Like SiT,
    N = ``sampling.steps`` network evaluations: N − 1 Euler–Maruyama steps on the grid
    linspace(0, 1 − last_step_size, N), then the noise-free step x + drift·last_step_size.
    So N counts grid points here, as in SiT and in REPA's ``euler_maruyama_sampler`` (whose grid,
    in its time, is linspace(1, 0.04, N) followed by 0, and whose drift and noise are these in SiT
    time); each step is guided when its start is inside ``sampling.guidance_interval``. (SiT's
    default is N = 250.)

    ``generator`` draws the Brownian increments: one for the batch, or one per sample (so a
    sample's noise does not depend on the batch it is drawn in), each on its own device: give
    generators on the samples' device, or every step copies its increments there.
    ``plan``: ``schedule(sampling)`` if already computed (its ``last_step_size``, SiT's 0.04 by default).
    """
    cond = as_condition(cond)
    plan = plan or schedule(sampling)
    channels = sampling.guided_channels
    x = noise.float()  # (N, C, H, W)
    for (t0, t1), scale in zip(itertools.pairwise(plan.times), plan.scales):
        dt = t1 - t0
        dw = gaussian(x.shape, generator, x.device) * dt**0.5  # (N, C, H, W)
        x = x + sde_drift(velocity(model, x, t0, cond, cfg_scale=scale, guided_channels=channels), x, t0) * dt + (2 * (1 - t0)) ** 0.5 * dw
    end = plan.times[-1]
    return x + sde_drift(velocity(model, x, end, cond, cfg_scale=plan.scales[-1], guided_channels=channels), x, end) * plan.last_step_size


def sde_drift(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """v + w(t)·s with w = 1 − t and s = (t·v − x)/(1 − t): the (1 − t) factors cancel."""
    return v + (t * v - x)  # (N, C, H, W)


def gaussian(shape: torch.Size | tuple[int, ...], generator: Generators, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``: from one generator, one per sample (along dim 0), or the device's global RNG.

    Each generator draws on its own device; only noise drawn elsewhere is copied to ``device``.
    """
    device = torch.device(device)
    if generator is None:
        return torch.randn(shape, device=device)
    if isinstance(generator, torch.Generator):
        noise = torch.randn(shape, generator=generator, device=generator.device)
    elif len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for {shape[0]} samples")
    else:
        noise = torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator])
    return noise if noise.device == device else noise.to(device)


@contextlib.contextmanager
def numerics(device: torch.device | str, *, bf16: bool = False) -> Iterator[None]:
    """TF32 matmuls and convolutions on a GPU (as DiT's and SiT's samplers set them) and, with ``bf16``, bfloat16 autocast; restored on exit.

    Autocast lowers the network's matmuls only: a sampler's state, its arithmetic and the velocity
    it reads (``_forward`` returns float32) stay float32, the time grid float64.
    """
    device = torch.device(device)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def integrate(
    model: DiT, noise: torch.Tensor, cond: Condition, sampling: Sampling, *, generator: Generators = None, plan: Schedule | None = None
) -> torch.Tensor:
    """Runs ``sampling.sampler`` from ``noise`` at t = 0 to t = 1 with its steps, guidance, channels and precision.

    ``dopri5`` ignores ``sampling.steps``: it chooses its own steps. ``generator`` draws the
    Euler–Maruyama sampler's Brownian increments; ``plan`` is ``schedule(sampling)``, computed once
    by a caller that integrates many batches (None: computed here).
    """
    with numerics(noise.device, bf16=sampling.precision == "bf16"):
        if sampling.sampler == "dopri5":
            return dopri5_ode_sample(model, noise, cond, sampling)
        plan = plan or schedule(sampling)
        if sampling.sampler == "euler-maruyama":
            return euler_maruyama_sample(model, noise, cond, sampling, generator=generator, plan=plan)
        ode = {"euler": euler_ode_sample, "heun": heun_ode_sample}[sampling.sampler]
        return ode(model, noise, cond, sampling, plan=plan)
