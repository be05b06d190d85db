"""FID, Inception Score and classifier accuracy of generated samples, through torchmetrics.

Features (``--features``) are either

- ``inception``: torch-fidelity's port of the TensorFlow Inception v3 that FID and IS are defined
  with (2048-d pool features; 1008 unbiased logits for IS), the very network and resize that
  torch-fidelity's own ``fid``/``isc`` use. Its weights are a local file (``--inception-weights``,
  torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``) or torch-fidelity's download;
- a DINOv2-architecture visual encoder as the visual attach step loads it (a transformers name
  or folder, timm name, ``demo:digits-encoder``): its CLS token is the feature. An encoder saved
  with a classification head (``Dinov2ForImageClassification``) with one output per class of the
  model also gives the share of samples it assigns their conditioning class (``accuracy``).

Real and generated images enter alike: uint8 R×R ADM crops (generated images are R×R already).
The reference side of FID is the mean and covariance of the features over a source, computed
once and cached by (source fingerprint, feature network fingerprint, R), or read from an
``.npz`` holding ``mu`` and ``sigma`` (such as the ADM evaluator's reference batches, which
match the ``inception`` features).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from d2c_pack.attach.visual import VisualEncoder
from d2c_pack.demo import resolve_model_path
from d2c_pack.errors import UserError, first_line
from d2c_pack.fingerprint import module_sha256, sha256_json
from d2c_pack.preprocess import center_crop_adm
from d2c_pack.progress import progress_bar
from d2c_pack.score import default_work_dir
from d2c_pack.sources import ImageSource, open_source
from d2c_pack.train.encoder import SourceCrops, classifier_inputs
from d2c_pack.train.sample import generate_batches, load_for_sampling, to_uint8
from d2c_pack.train.transport import Interval, as_interval

INCEPTION = "inception"
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_OUTPUTS = ("2048", "logits_unbiased")  # FID's pool features, IS's logits
IS_SPLITS = 10  # as torch-fidelity and the ADM evaluator (5,000 samples a split at 50k)


class FeatureExtractor(nn.Module):
    """A torchmetrics ``feature`` module: uint8 images (N, 3, H, W) → float features (N, ``num_features``)."""

    num_features: int

    def fingerprint(self) -> str:
        """SHA-256 of what the features depend on (network weights and input handling)."""
        raise NotImplementedError


class InceptionFeatures(FeatureExtractor):
    """One output of torch-fidelity's Inception v3 (``"2048"`` or ``"logits_unbiased"``); views share the network."""

    def __init__(self, network: nn.Module, output: str = "2048"):
        super().__init__()
        self.network = network
        self.index = INCEPTION_OUTPUTS.index(output)
        self.num_features = 2048 if output == "2048" else 1008
        self._fingerprint: str | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)[self.index].float()  # (N, D)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = sha256_json({"features": INCEPTION, "weights": module_sha256(self.network)})
        return self._fingerprint


class EncoderFeatures(FeatureExtractor):
    """The CLS token of a DINOv2 visual encoder on the images' R×R crops, as the visual attach step computes it."""

    def __init__(self, name: str, resolution: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.encoder = VisualEncoder(name, resolution, device)
        self.num_features = self.encoder.dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, cls = self.encoder(images)  # (N, D) on the CPU
        return cls.to(images.device)

    def fingerprint(self) -> str:
        return sha256_json({"features": "dinov2-cls", "encoder": self.encoder.fingerprint()})


def inception_network(weights: str | Path | None) -> nn.Module:
    """torch-fidelity's Inception v3 giving pool features and unbiased logits, from a local file or its download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if weights is not None:
        weights = str(weights)
        _check_inception_file(Path(weights))
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", list(INCEPTION_OUTPUTS), feature_extractor_weights_path=weights)
    except OSError as err:  # urllib's errors (offline, proxy, HTTP) are OSErrors
        raise UserError(
            f"cannot download torch-fidelity's Inception weights ({first_line(err)}): "
            f"pass --inception-weights PATH to a local {INCEPTION_WEIGHTS_NAME}"
        ) from None
    except RuntimeError as err:  # load_state_dict: another network's weights
        raise UserError(f"{weights or 'the downloaded file'} does not hold torch-fidelity's Inception v3 weights: {first_line(err)}") from None


def _check_inception_file(path: Path) -> None:
    """Refuses a missing file and any pickle beyond plain tensors before torch-fidelity unpickles it freely."""
    if not path.is_file():
        raise UserError(f"no Inception weights at {path} (--inception-weights expects torch-fidelity's {INCEPTION_WEIGHTS_NAME})")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors have no common base class
        raise UserError(f"cannot read {path} as a weights-only state dict: {first_line(err)}") from None


def load_features(
    features: str, resolution: int, *, inception_weights: str | Path | None = None, device: torch.device | str = "cpu"
) -> FeatureExtractor:
    """``"inception"`` → Inception pool features; any other name → that visual encoder's CLS token."""
    if features == INCEPTION:
        return InceptionFeatures(inception_network(inception_weights)).to(device)
    return EncoderFeatures(features, resolution, device)


@dataclasses.dataclass
class ReferenceStatistics:
    """Mean (D,) and covariance (D, D) of the features of a reference set of ``count`` images."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:  # a file object: np.savez would append ".npz" to the name
            np.savez(file, mu=self.mu, sigma=self.sigma, count=np.int64(self.count or 0))
        partial.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStatistics:
        """Reads ``mu`` and ``sigma`` (and ``count`` where present) from an ``.npz``."""
        try:
            with np.load(path) as data:
                count = int(data["count"]) if "count" in data else None
                return cls(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), count or None)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"cannot read reference statistics (mu, sigma) from {path}: {first_line(err)}") from None


def source_batches(
    source: ImageSource, resolution: int, *, batch_size: int = 256, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The source's readable images as uint8 ADM crops (B, 3, R, R) with their labels (B,), in index order."""
    if source.random_access:
        dataset = SourceCrops(source, resolution, list(range(len(source))))
        items: Iterable = (item for batch in DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=list) for item in batch)
    else:
        items = ((torch.from_numpy(np.array(center_crop_adm(r.image, resolution))).permute(2, 0, 1), r.label) for r in source.iter_records())
    batch: list[tuple[torch.Tensor, int]] = []
    for item in items:
        if item is not None:  # a corrupt image (recorded in source.skipped)
            batch.append(item)
        if len(batch) == batch_size:
            yield _stack(batch)
            batch = []
    if batch:
        yield _stack(batch)


def _stack(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([crop for crop, _ in items]), torch.tensor([label for _, label in items])  # (B, 3, R, R), (B,)


def reference_statistics(
    source: str | ImageSource,
    features: str | FeatureExtractor,
    resolution: int,
    *,
    work_dir: str | Path | None = None,
    inception_weights: str | Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
) -> ReferenceStatistics:
    """Feature mean and covariance over a source (a spec for ``open_source`` or an opened source), ADM-cropped to R.

    Cached under ``work_dir/fid-references/`` by (source fingerprint, feature network, R).
    """
    source = open_source(source) if isinstance(source, str) else source
    extractor = features if isinstance(features, FeatureExtractor) else load_features(features, resolution, inception_weights=inception_weights, device=device)
    key = sha256_json({"source": source.fingerprint(), "features": extractor.fingerprint(), "resolution": resolution})
    cached = Path(work_dir or default_work_dir()) / "fid-references" / f"{key}.npz"
    if cached.exists():
        return ReferenceStatistics.load(cached)
    metric = FrechetInceptionDistance(feature=extractor).to(device)
    with progress_bar(f"reference features {source.spec}", total=len(source)) as advance:
        for crops, _ in source_batches(source, resolution, batch_size=batch_size, workers=workers):
            metric.update(crops.to(device), real=True)
            advance(len(crops))
    count = int(metric.real_features_num_samples)
    if count < 2:
        raise UserError(f"{source.spec} has {count} readable image(s): reference statistics need at least 2")
    mu = metric.real_features_sum / count  # (D,)
    # The unbiased covariance, as torchmetrics computes it for its own real side.
    sigma = (metric.real_features_cov_sum - count * torch.outer(mu, mu)) / (count - 1)  # (D, D)
    statistics = ReferenceStatistics(mu.cpu().numpy(), sigma.cpu().numpy(), count)
    statistics.save(cached)
    return statistics


def frechet_metric(extractor: FeatureExtractor, reference: ReferenceStatistics) -> FrechetInceptionDistance:
    """A torchmetrics FID whose real side is ``reference``: update it with generated images only."""
    if reference.mu.shape != (extractor.num_features,):
        raise UserError(f"the reference statistics have {reference.mu.shape[0]} features, the feature network gives {extractor.num_features}")
    metric = FrechetInceptionDistance(feature=extractor)
    # The sums torchmetrics accumulates, rebuilt from mean and covariance; any count ≥ 2 gives back
    # the same mean and covariance (ADM's reference files store none).
    count = reference.count or 2
    mu, sigma = torch.from_numpy(reference.mu).double(), torch.from_numpy(reference.sigma).double()
    metric.real_features_sum = mu * count  # (D,)
    metric.real_features_cov_sum = sigma * (count - 1) + count * torch.outer(mu, mu)  # (D, D)
    metric.real_features_num_samples = torch.tensor(count)
    return metric


def frechet_distance(batches: Iterable[torch.Tensor], reference: ReferenceStatistics, extractor: FeatureExtractor) -> float:
    """FID of uint8 image batches (B, 3, R, R) against ``reference``."""
    metric = frechet_metric(extractor, reference)
    for crops in batches:
        metric.update(crops, real=False)
    return float(metric.compute())


def load_reference(
    reference: str | ImageSource, extractor: FeatureExtractor, resolution: int, **options
) -> ReferenceStatistics:
    """An ``.npz`` of ``mu``/``sigma``, or the cached statistics of a source (``options`` as ``reference_statistics``)."""
    if isinstance(reference, str) and reference.endswith(".npz") and Path(reference).is_file():
        return ReferenceStatistics.load(reference)
    return reference_statistics(reference, extractor, resolution, **options)


def load_classifier(features: str, num_classes: int, device: torch.device | str = "cpu") -> nn.Module | None:
    """The encoder's transformers image classifier when it has one output per class, else None."""
    if features == INCEPTION:
        return None
    from transformers import AutoConfig, AutoModelForImageClassification

    path = resolve_model_path(features)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):  # a timm encoder: no transformers head
        return None
    if not any(name.endswith("ForImageClassification") for name in config.architectures or ()) or config.num_labels != num_classes:
        return None
    return AutoModelForImageClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()


@torch.no_grad()
def classifier_predictions(classifier: nn.Module, crops: torch.Tensor, resolution: int) -> torch.Tensor:
    """The class the classifier gives each uint8 crop (B, 3, R, R), seen as the encoder trainer shows images: (B,)."""
    return classifier(pixel_values=classifier_inputs(crops, resolution)).logits.argmax(-1)  # (B,)


def evaluate(
    checkpoint: str | Path,
    *,
    reference: str | ImageSource,
    features: str = INCEPTION,
    num_samples: int = 50_000,
    sampler: str = "euler",
    num_steps: int = 50,
    cfg_scale: float = 1.0,
    guidance_interval: Interval = (0.0, 1.0),
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    inception_weights: str | Path | None = None,
    work_dir: str | Path | None = None,
    workers: int = 0,
    vae: str | None = None,
) -> dict:
    """FID (and IS with Inception features, accuracy with a classifier encoder) of ``num_samples`` samples.

    Sample i is of class i mod C with the noise of (seed, i), as in ``sample_npz``; the metrics are
    updated batch by batch, so only one batch of images is ever held.
    """
    if num_samples < 2:
        raise UserError(f"--num-samples must be at least 2 for FID, got {num_samples}")
    interval = as_interval(guidance_interval)
    model, config, class_text = load_for_sampling(checkpoint, device, vae=vae)
    resolution = config.image_size
    labels = torch.arange(num_samples) % config.num_classes
    batches = generate_batches(
        model, config, labels, class_text=class_text, sampler=sampler, num_steps=num_steps, cfg_scale=cfg_scale,
        guidance_interval=interval, seed=seed, batch_size=batch_size,
    )  # fmt: skip
    extractor = load_features(features, resolution, inception_weights=inception_weights, device=device)
    statistics = load_reference(reference, extractor, resolution, work_dir=work_dir, device=device, batch_size=batch_size, workers=workers)
    fid = frechet_metric(extractor, statistics).to(device)
    inception_score = None
    if isinstance(extractor, InceptionFeatures):
        with warnings.catch_warnings():  # that IS keeps every logit (N × 1008 floats) is expected
            warnings.filterwarnings("ignore", "Metric `InceptionScore` will save all extracted features")
            inception_score = InceptionScore(InceptionFeatures(extractor.network, "logits_unbiased"), splits=min(IS_SPLITS, num_samples)).to(device)
    classifier = load_classifier(features, config.num_classes, device)
    correct = done = 0
    with progress_bar("eval", total=num_samples) as advance:
        for images in batches:
            crops = to_uint8(images).to(device)  # (B, 3, R, R)
            fid.update(crops, real=False)
            if inception_score is not None:
                inception_score.update(crops)
            if classifier is not None:
                predicted = classifier_predictions(classifier, crops, resolution).cpu()  # (B,)
                correct += int((predicted == labels[done : done + len(crops)]).sum())
            done += len(crops)
            advance(len(crops))
    is_mean = is_std = None
    if inception_score is not None:
        with torch.random.fork_rng(devices=[]):  # IS shuffles its splits with the global RNG: fix it
            torch.manual_seed(seed)
            is_mean, is_std = (float(v) for v in inception_score.compute())
    return {
        "fid": float(fid.compute()),
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "accuracy": correct / num_samples if classifier is not None else None,
        "num_samples": num_samples,
        "checkpoint": str(checkpoint),
        "reference": reference if isinstance(reference, str) else reference.spec,
        "reference_images": statistics.count,
        "features": features,
        "resolution": resolution,
        "sampler": sampler,
        "num_steps": num_steps,
        "cfg_scale": cfg_scale,
        "guidance_interval": [interval.low, interval.high],
        "guidance_time": interval.time,
        "seed": seed,
    }


def subset_defaults(data: str) -> tuple[str, str]:
    """The reference and features ``eval --data DATA`` uses unless told otherwise.

    Reference: the source the subset was condensed from (its manifest), so FID says how close the
    samples come to the full data; else the subset itself. Features: the subset's own visual
    encoder when it is a demo model (Inception means nothing on 32-pixel digits), else Inception.
    """
    from d2c_pack.verify import locate, read_manifest

    try:
        manifest = read_manifest(locate(data))
    except UserError:
        return f"hf:{data}", INCEPTION
    encoder = manifest["inputs"].get("visual_encoder") or ""
    return manifest["source"]["spec"], encoder if encoder.startswith("demo:") else INCEPTION
