"""Train a small DINOv2-architecture image classifier on any labelled source (the demo's visual encoder).

The classifier is a transformers ``Dinov2ForImageClassification`` that sees each image as the
visual attach step does (ADM crop, ImageNet normalisation, bicubic resize to 224·R/256), so its
backbone can serve as ``--visual-encoder`` and its head classifies generated images. One
difference is kept on purpose: its resize is antialiased (:func:`classifier_inputs`), the input
the committed demo encoder was trained on, where attach follows REPA and does not antialias.

Output folder layout::

    OUT/model/         config.json + model.safetensors (float16), loadable with from_pretrained
    OUT/metrics.json   train and held-out accuracy of that model

A fixed share of the source (10% by default, chosen with a seed of its own so runs with
different ``--seed`` are measured on the same images) is held out and never trained on; the
saved model is the one whose held-out accuracy is reported. All randomness of step s (batch
order and augmentation) derives from (seed, s), so a seed gives the same weights on the same
machine.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import Dinov2Config, Dinov2ForImageClassification

from d2c_pack.attach.visual import classifier_inputs, encoder_input_size
from d2c_pack.core.distributed import pick_device
from d2c_pack.core.errors import UserError
from d2c_pack.core.progress import progress_bar
from d2c_pack.sources.image_source import ImageSource
from d2c_pack.sources.preprocess import SourceCrops
from d2c_pack.training.data import EpochPermutationBatches
from d2c_pack.training.settings import EncoderTrainConfig

HOLDOUT_SEED = 0  # the held-out split ignores --seed: every run is measured on the same images
WARMUP_SHARE = 0.05  # of the steps, with a linear learning-rate warm-up before the cosine decay
EVAL_BATCH = 256
LOAD_BATCH = 256




def train_encoder(config: EncoderTrainConfig) -> Path:
    """Trains the classifier; writes OUT/model and OUT/metrics.json and returns OUT/model."""
    out = Path(config.out)
    device = pick_device(config.device)
    source = config.open_source()
    train_indices, heldout_indices = holdout_split(len(source), config.holdout)
    train_crops, train_labels = load_crops(source, config, train_indices)
    heldout_crops, heldout_labels = load_crops(source, config, heldout_indices)
    if not len(train_labels):
        raise UserError(f"no training image of {config.source} could be read")
    torch.manual_seed(config.seed)
    model = Dinov2ForImageClassification(model_config(config, source.class_names)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config.steps))
    batches = EpochPermutationBatches(len(train_labels), config.batch_size, seed=config.seed, start_step=0, num_steps=config.steps)
    tic = time.perf_counter()
    with progress_bar("train-encoder", total=config.steps) as advance:
        for step, batch in enumerate(batches):
            crops, labels = train_crops[batch].to(device), train_labels[batch].to(device)
            loss = _train_step(model, optimizer, config, step, crops, labels)
            schedule.step()
            advance(description=f"train-encoder loss {loss:.4f}")
    seconds = time.perf_counter() - tic
    model.eval()
    metrics = {
        "train_accuracy": accuracy(model, train_crops, train_labels, config.resolution),
        "heldout_accuracy": accuracy(model, heldout_crops, heldout_labels, config.resolution) if len(heldout_labels) else None,
        "train_images": len(train_labels),
        "heldout_images": len(heldout_labels),
        "steps": config.steps,
        "train_seconds": round(seconds, 1),
    }
    folder = out / "model"
    # float16 halves the files; from_pretrained(dtype=torch.float32) restores full-precision compute.
    model.to(torch.float16).save_pretrained(folder)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if source.skipped:
        print(f"skipped {len(source.skipped)} unreadable images (first: {source.skipped[0].source_id})")
    return folder


def load_crops(source: ImageSource, config: EncoderTrainConfig, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ADM crops (N, 3, R, R) uint8 and labels (N,) of the readable images at ``indices``.

    Decoding once and keeping the crops in memory (N·3·R² bytes: 5 MB for the digits, 150 MB
    for 50k images at R=32) makes each step pure model work; ``workers`` decode in parallel.
    """
    dataset = SourceCrops(source, config.resolution, indices)
    loader = DataLoader(dataset, batch_size=LOAD_BATCH, num_workers=config.workers, collate_fn=_readable)
    items = [item for batch in loader for item in batch]
    if not items:
        return torch.empty(0, 3, config.resolution, config.resolution, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.stack([crop for crop, _ in items]), torch.tensor([label for _, label in items])  # (N, 3, R, R), (N,)


def _readable(items: list[tuple[torch.Tensor, int] | None]) -> list[tuple[torch.Tensor, int]]:
    return [item for item in items if item is not None]


def model_config(config: EncoderTrainConfig, class_names: list[str]) -> Dinov2Config:
    """The DINOv2 classifier's architecture for these settings and classes."""
    return Dinov2Config(
        image_size=encoder_input_size(config.resolution),
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        mlp_ratio=4,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
    )


def holdout_split(num_items: int, share: float) -> tuple[list[int], list[int]]:
    """(train, held-out) source indices, each ascending: a fixed random ``share`` is held out."""
    order = np.random.default_rng(HOLDOUT_SEED).permutation(num_items)
    held = round(share * num_items)
    if num_items - held < 1:
        raise UserError(f"the source has {num_items} images: too few to hold out {share:.0%} and train on the rest")
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())


def lr_factor(step: int, steps: int) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warm-up, then cosine decay to 0."""
    warmup = max(1, round(WARMUP_SHARE * steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _train_step(
    model: Dinov2ForImageClassification,
    optimizer: torch.optim.Optimizer,
    config: EncoderTrainConfig,
    step: int,
    crops: torch.Tensor,
    labels: torch.Tensor,
) -> float:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([config.seed, step]).generate_state(1)[0]))
    pixels = random_shift(classifier_inputs(crops, config.resolution), config.shift, generator)  # (B, 3, S, S)
    with torch.autocast(crops.device.type, dtype=torch.bfloat16, enabled=crops.device.type == "cuda"):
        logits = model(pixel_values=pixels).logits  # (B, C)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def random_shift(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translates each image by up to ``max_shift`` pixels each way, repeating the border pixels."""
    if max_shift == 0:
        return pixels
    size = pixels.shape[-1]
    padded = F.pad(pixels, (max_shift,) * 4, mode="replicate")  # (B, 3, S + 2m, S + 2m)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(pixels), 2), generator=generator).tolist()
    return torch.stack([image[:, y : y + size, x : x + size] for image, (y, x) in zip(padded, offsets)])  # (B, 3, S, S)


@torch.no_grad()
def accuracy(model: Dinov2ForImageClassification, crops: torch.Tensor, labels: torch.Tensor, resolution: int) -> float:
    """Share of the (N, 3, R, R) uint8 ``crops`` that ``model`` assigns their ``labels``."""
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH):
        pixels = classifier_inputs(crops[start : start + EVAL_BATCH].to(device), resolution)  # (B, 3, S, S)
        predicted = model(pixel_values=pixels).logits.argmax(-1).cpu()  # (B,)
        correct += (predicted == labels[start : start + EVAL_BATCH]).sum().item()
    return correct / len(labels)
