"""Sampling from a trained backbone: PNG grids and ADM-evaluator ``.npz`` files.

Sample i of a call is drawn from its own generator seeded by (seed, i), so the images depend
on the seed and on their position only, never on the batch size. Under ``torchrun`` each rank
draws its share of the batches on its own GPU (:meth:`~d2c_pack.core.distributed.Context.batches`:
the batches one process would draw, so the images do not depend on the world size either) and
rank 0 gathers them in index order and writes the one output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from d2c_pack.core import distributed
from d2c_pack.core.distributed import pick_device
from d2c_pack.core.errors import UserError
from d2c_pack.core.progress import progress_bar
from d2c_pack.diffusion.sampling import LABEL_MODES, Sampling
from d2c_pack.diffusion.transport import Condition, integrate, numerics, schedule
from d2c_pack.evaluation.adm_npz import write_samples
from d2c_pack.models.checkpoint import CONFIG_NAME, BackboneConfig, ClassText, load_backbone, load_class_text, resolve_backbone_path
from d2c_pack.models.dit import DiT
from d2c_pack.models.latents import load_latent_space


def load_for_sampling(
    path: str | Path, device: torch.device | str = "auto", *, vae: str | None = None, num_heads: int | None = None
) -> tuple[DiT, BackboneConfig, ClassText | None]:
    """The model (EMA weights where saved) on ``device`` ('auto': the GPU if any), its config and its class text (None without text).

    ``path`` is a model folder, a training run folder (its final ``model/``, else its newest
    checkpoint), an official or REPA ``.pt`` file, or ``demo:digits``. ``vae`` replaces the VAE the model
    names (a local copy of it: its weights must hash as the model recorded). ``num_heads``: the
    attention heads of a ``.pt`` whose width is not a DiT/SiT size.
    """
    folder = model_folder(path)
    model, config = load_backbone(folder, map_location=pick_device(str(device)), num_heads=num_heads)
    if vae is not None:
        if config.vae is None:
            raise UserError(f"{path} works on pixels and uses no VAE; leave out --vae")
        config.vae = vae
    return model, config, load_class_text(folder)


def model_folder(path: str | Path) -> str | Path:
    """Where the weights of ``path`` are: the path itself, or a run folder's ``model/`` or newest checkpoint."""
    run = resolve_backbone_path(path)
    if not run.is_dir() or (run / CONFIG_NAME).exists():
        return path
    if (run / "model" / CONFIG_NAME).exists():
        return run / "model"
    # The trainer writes checkpoints under a temporary name and renames them when complete.
    checkpoints = sorted(p for p in (run / "checkpoints").glob("[0-9]" * 7) if (p / CONFIG_NAME).exists())
    if not checkpoints:
        raise UserError(f"{path} holds no model: expected {CONFIG_NAME}, a run's model/ or checkpoints/NNNNNNN/")
    return checkpoints[-1]


def class_conditions(labels: torch.Tensor, class_text: ClassText | None) -> Condition:
    """The condition of each label: its class, and its class's text when the model has text."""
    if class_text is None:
        return Condition(labels)
    return Condition(labels, class_text.embedding[labels], class_text.mask[labels])  # (N,), (N, L, D), (N, L)


def sample_labels(num_samples: int, num_classes: int, mode: str, seed: int) -> torch.Tensor:
    """The class of each of ``num_samples`` samples (N,).

    ``random``: uniform and independent, as DiT, SiT and REPA sample for FID-50K (from ``seed``,
    on a stream of its own, so the same seed gives the same labels whatever the batch size);
    ``balanced``: sample i is of class i mod C, every class (nearly) equally often.
    """
    if mode == "balanced":
        return torch.arange(num_samples) % num_classes
    if mode not in LABEL_MODES:
        raise UserError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    generator = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))  # not any sample's (seed, i) stream
    return torch.from_numpy(generator.integers(0, num_classes, num_samples))


def sample_generators(seed: int, indices: range, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample on ``device``, seeded by (seed, index)."""
    states = (np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] for i in indices)
    return [torch.Generator(device).manual_seed(int(state)) for state in states]


def generate_batches(
    model: DiT,
    config: BackboneConfig,
    labels: torch.Tensor,
    sampling: Sampling = Sampling(),
    *,
    class_text: ClassText | None = None,
    batches: Iterable[range] | None = None,
) -> Iterator[torch.Tensor]:
    """The images of ``generate`` batch by batch, each (B, 3, R, R) in [-1, 1] on the model's device.

    ``batches``: the samples (positions in ``labels``) of each batch; default: consecutive batches
    of ``sampling.batch_size``. An empty range gives an empty batch without running the model.
    The model is checked and the VAE loaded here, before the first batch is asked for.
    """
    check_sampling(config, labels, class_text)
    device = next(model.parameters()).device
    space = load_latent_space(config.vae, device, expected_sha256=config.vae_sha256)
    conditions = class_conditions(labels.cpu(), class_text if config.text_dim else None)
    plan = schedule(sampling)  # the time grid and guidance of every step, once for all batches
    if batches is None:
        batches = [range(start, min(start + sampling.batch_size, len(labels))) for start in range(0, len(labels), sampling.batch_size)]

    def images() -> Iterator[torch.Tensor]:
        shape = (config.in_channels, config.input_size, config.input_size)
        for part in batches:
            if not part:
                yield torch.empty(0, 3, config.image_size, config.image_size, device=device)
                continue
            generators = sample_generators(sampling.seed, part)
            noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)  # (B, C, H, W)
            # The SDE draws each sample's Brownian increments from a generator of its own, on the device (no
            # step waits for a copy): on the CPU the one that drew its noise, on a GPU one seeded by (seed, i) too.
            increments = generators if device.type == "cpu" else sample_generators(sampling.seed, part, device)
            latents = integrate(model, noise, conditions[part.start : part.stop].to(device), sampling, generator=increments, plan=plan)
            with numerics(device):
                decoded = space.decode(latents).clamp(-1, 1)  # (B, 3, R, R)
            yield decoded

    return images()


def generate(
    model: DiT, config: BackboneConfig, labels: torch.Tensor, sampling: Sampling = Sampling(), *, class_text: ClassText | None = None
) -> torch.Tensor:
    """Images in [-1, 1], (N, 3, R, R) on the CPU, one per label, decoded through the config's VAE.

    The same ``sampling.seed`` gives the same images whatever ``sampling.batch_size``, except with
    ``dopri5``, whose steps are chosen for the whole batch (SiT's behaviour), so that a sample
    depends on the batch it is drawn in.
    """
    return torch.cat([batch.cpu() for batch in generate_batches(model, config, labels, sampling, class_text=class_text)])


def generate_shared(
    context: distributed.Context,
    model: DiT,
    config: BackboneConfig,
    labels: torch.Tensor,
    sampling: Sampling,
    *,
    class_text: ClassText | None = None,
    convert: Callable[[torch.Tensor], torch.Tensor] = lambda images: images,
) -> Iterator[list[torch.Tensor] | None]:
    """This rank's share of ``generate``, round by round: rank 0 gets the round's ``convert``-ed batches in index order, other ranks None.

    Each rank converts its own batch (to uint8, say) before the gather. Every rank must consume all the rounds.
    """
    batches = generate_batches(model, config, labels, sampling, class_text=class_text, batches=context.batches(len(labels), sampling.batch_size))
    return (context.gather(convert(batch)) for batch in batches)


def check_sampling(config: BackboneConfig, labels: torch.Tensor, class_text: ClassText | None) -> None:
    """Raises a ``UserError`` where the model cannot be sampled for ``labels`` (the settings check themselves: ``Sampling``)."""
    if config.prediction != "velocity":
        raise UserError(f"{config.name} predicts noise; the samplers integrate SiT velocity models")
    if config.text_dim and class_text is None:
        raise UserError(f"{config.name} is text-conditioned but no class text was saved with it (class_text.safetensors beside the weights)")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < config.num_classes:
        raise UserError(f"labels must be class indices 0..{config.num_classes - 1}")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats → uint8 with the rounding of ``tensor_to_image`` (= SiT's clamp(127.5·x + 128))."""
    return ((images + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)


def sample_grid(
    checkpoint: str | Path,
    out: str | Path,
    *,
    per_class: int = 8,
    classes: list[int] | None = None,
    sampling: Sampling = Sampling(),
    device: str = "auto",
    vae: str | None = None,
    num_heads: int | None = None,
) -> Path | None:
    """Writes a PNG grid with one row per class (default: all) and ``per_class`` samples per row.

    Args:
        checkpoint: A training run folder, a d2c-pack model folder, an official SiT .pt file, or demo:digits.
        out: The PNG to write.
        per_class: Samples per class.
        classes: The classes of the rows.
        sampling: How the samples are drawn (``sampling.labels`` does not apply: the rows set the classes).
        device: 'auto' (this rank's GPU if any, else the CPU), 'cpu', 'cuda', …
        vae: A local copy of the VAE the model was trained with.
        num_heads: The attention heads of a ``.pt`` whose width is not a DiT/SiT size.

    Returns:
        The path written; None on the ranks other than 0 under ``torchrun`` (which share the sampling).
    """
    context = distributed.init(device)
    model, config, class_text = load_for_sampling(checkpoint, context.device, vae=vae, num_heads=num_heads)
    classes = list(range(config.num_classes)) if classes is None else classes
    if bad := [c for c in classes if not 0 <= c < config.num_classes]:
        raise UserError(f"class {bad[0]} is out of range: the model has {config.num_classes} classes")
    labels = torch.tensor(classes).repeat_interleave(per_class)
    rounds = list(generate_shared(context, model, config, labels, sampling, class_text=class_text))
    if context.is_main:
        images = torch.cat([batch.cpu() for batches in rounds for batch in batches])
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image((images + 1) / 2, out, nrow=per_class, padding=1)
    context.barrier()  # every rank returns once the grid is written
    return Path(out) if context.is_main else None


def sample_npz(
    checkpoint: str | Path,
    out: str | Path,
    *,
    num_samples: int = 50_000,
    sampling: Sampling = Sampling(),
    device: str = "auto",
    vae: str | None = None,
    num_heads: int | None = None,
) -> Path | None:
    """Writes ``num_samples`` samples as the ``.npz`` openai/guided-diffusion's ``evaluator.py`` reads.

    ``arr_0`` holds the images, uint8 (N, R, R, 3); ``arr_1`` their labels, int64 (N,), drawn as
    ``sample_labels`` does for ``sampling.labels``. The images are streamed into the archive batch
    by batch (memory stays one round of batches), into a temporary file renamed when complete.
    Under ``torchrun`` every rank samples its share and sends it, as uint8, to rank 0, which alone
    writes the file; the file is byte for byte the one a single process writes. ``checkpoint``,
    ``device``, ``vae`` and ``num_heads`` are as in :func:`sample_grid`; None is returned on ranks other than 0.
    """
    if num_samples < 1:
        raise UserError(f"--num-samples must be positive, got {num_samples}")
    context = distributed.init(device)
    model, config, class_text = load_for_sampling(checkpoint, context.device, vae=vae, num_heads=num_heads)
    targets = sample_labels(num_samples, config.num_classes, sampling.labels, sampling.seed)
    rounds = generate_shared(context, model, config, targets, sampling, class_text=class_text, convert=lambda batch: to_uint8(batch).permute(0, 2, 3, 1))
    if not context.is_main:
        for _ in rounds:  # this rank's batches go to rank 0
            pass
        context.barrier()
        return None
    with progress_bar("sample", total=num_samples) as advance:

        def images() -> Iterator[np.ndarray]:
            for batches in rounds:
                for batch in batches:
                    yield batch.cpu().numpy()  # (B, R, R, 3)
                    advance(len(batch))

        path = write_samples(out, images(), targets.numpy(), (config.image_size, config.image_size, 3))
    context.barrier()  # every rank returns once the file is complete
    return path
