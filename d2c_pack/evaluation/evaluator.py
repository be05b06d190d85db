"""``d2c-pack eval``: the ADM suite (FID, sFID, IS, precision, recall) and classifier accuracy of samples.

Samples are generated from a model, or read from an ADM ``.npz`` (``arr_0`` uint8 N×H×W×3,
``arr_1`` labels). Features (``--features``) are either

- ``inception``: torch-fidelity's port of the TensorFlow Inception v3 graph the ADM evaluator
  runs (same weights, same bilinear resize to 299): pool features (2048, FID, precision,
  recall), the first 7 channels of ``mixed_6/conv`` (= ``Mixed_6d.branch1x1``, 17×17×7 = 2023,
  sFID) and the 1008 logits without bias (IS). Its weights are a local file
  (``--inception-weights``, torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``) or
  torch-fidelity's download;
- a DINOv2-architecture visual encoder as the visual attach step loads it (a transformers name
  or folder, timm name, ``demo:digits-encoder``): its CLS token is the feature (FID, precision,
  recall). An encoder saved with one classification output per class of the model also gives
  the share of samples it assigns their conditioning class (``accuracy``).

The reference is an ADM reference batch (``VIRTUAL_imagenet256_labeled.npz``: its ``mu``/``sigma``
and ``mu_s``/``sigma_s`` for FID/sFID, its 10,000 images for precision/recall) or any image
source, whose statistics and the features of 10,000 evenly spaced images are computed once
(with DataLoader workers, ``--workers``) and cached. Real and generated images enter alike: uint8
R×R ADM crops.

Under ``torchrun`` each rank samples (or reads) its share of the batches and runs the feature
network on them on its own GPU; rank 0 gathers the features batch by batch in index order, so
its statistics are summed in the order of a single process and the metrics are the same to the
bit. Rank 0 alone reads the reference and computes the metrics; the other ranks return None.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from d2c_pack.attach.visual import VisualEncoder, classifier_inputs
from d2c_pack.core import distributed
from d2c_pack.core.errors import UserError, first_line, require
from d2c_pack.core.fingerprint import module_sha256, sha256_file, sha256_json
from d2c_pack.core.paths import default_work_dir
from d2c_pack.core.progress import progress_bar
from d2c_pack.core.registry import resolve_model_path
from d2c_pack.diffusion.sampling import Sampling
from d2c_pack.evaluation.adm_npz import IMAGES, LABELS, ImageBatches, array_names, read_arrays
from d2c_pack.evaluation.metrics import FeatureStatistics, Moments, frechet_distance, inception_score, precision_recall
from d2c_pack.evaluation.sample import generate_batches, load_for_sampling, sample_labels, to_uint8
from d2c_pack.sources.image_source import ImageSource, open_source
from d2c_pack.sources.preprocess import SourceCrops, center_crop_adm

INCEPTION = "inception"
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_OUTPUTS = ("2048", "logits_unbiased")  # pool features, IS logits
SPATIAL_CHANNELS = 7  # of mixed_6/conv, as the ADM evaluator's sFID
PR_REFERENCE_IMAGES = 10_000  # reference images for precision/recall: the size of ADM's reference batches
CACHE_VERSION = 2  # of the cached reference files (2: spatial statistics and precision/recall features)


@dataclasses.dataclass
class ImageFeatures:
    """A batch's features: ``pool`` (B, D) for FID and precision/recall; ``spatial`` (B, 2023) for sFID; ``logits`` (B, 1008) for IS."""

    pool: torch.Tensor
    spatial: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class FeatureNetwork(nn.Module, abc.ABC):
    """uint8 images (N, 3, H, W) → ``ImageFeatures``."""

    num_features: int

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> ImageFeatures: ...

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """SHA-256 of what the features depend on (network weights and input handling)."""


class InceptionFeatures(FeatureNetwork):
    """torch-fidelity's Inception v3 with the ADM evaluator's three outputs."""

    num_features = 2048

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self._spatial: torch.Tensor | None = None
        # mixed_6/conv of the TensorFlow graph: the 1×1 branch of the fourth 17×17 block.
        network.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)
        self._fingerprint: str | None = None

    def _keep_spatial(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # The evaluator flattens NHWC; the order does not change sFID but keeps the features comparable.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float()  # (N, 17·17·7)

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        pool, logits = self.network(images)  # (N, 2048), (N, 1008)
        spatial, self._spatial = self._spatial, None
        return ImageFeatures(pool.float(), spatial, logits.float())

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = sha256_json({"features": INCEPTION, "weights": module_sha256(self.network), "spatial": SPATIAL_CHANNELS})
        return self._fingerprint


class EncoderFeatures(FeatureNetwork):
    """The CLS token of a DINOv2 visual encoder on the images' R×R crops, as the visual attach step computes it."""

    def __init__(self, name: str, resolution: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.encoder = VisualEncoder(name, resolution, device)
        self.num_features = self.encoder.dim

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        _, cls = self.encoder(images)  # (N, D) on the CPU
        return ImageFeatures(cls.to(images.device))

    def fingerprint(self) -> str:
        return sha256_json({"features": "dinov2-cls", "encoder": self.encoder.fingerprint()})


def inception_network(weights: str | Path | None) -> nn.Module:
    """torch-fidelity's Inception v3 giving pool features and unbiased logits, from a local file or its download."""
    inception = require("torch_fidelity.feature_extractor_inceptionv3", "eval", "Inception features")
    if weights is not None:
        weights = str(weights)
        _check_inception_file(Path(weights))
    try:
        return inception.FeatureExtractorInceptionV3("inception-v3-compat", list(INCEPTION_OUTPUTS), feature_extractor_weights_path=weights)
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
) -> FeatureNetwork:
    """``"inception"`` → the ADM evaluator's Inception features; any other name → that visual encoder's CLS token."""
    if features == INCEPTION:
        return InceptionFeatures(inception_network(inception_weights)).to(device)
    return EncoderFeatures(features, resolution, device)


@dataclasses.dataclass
class Reference:
    """What samples are compared with: statistics of the pool features (FID) and of the spatial ones (sFID,
    None without), and the pool features of up to 10,000 reference images (precision/recall, None without)."""

    statistics: FeatureStatistics
    spatial: FeatureStatistics | None = None
    features: torch.Tensor | None = None  # (M, D) float32

    def save(self, path: Path) -> None:
        arrays = {"mu": self.statistics.mu, "sigma": self.statistics.sigma, "count": np.int64(self.statistics.count or 0)}
        if self.spatial is not None:
            arrays |= {"mu_s": self.spatial.mu, "sigma_s": self.spatial.sigma}
        if self.features is not None:
            arrays["features"] = self.features.numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:  # a file object: np.savez would append ".npz" to the name
            np.savez(file, **arrays)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> Reference:
        arrays = read_arrays(path, ("mu", "sigma", "count", "mu_s", "sigma_s", "features"))
        spatial = FeatureStatistics(arrays["mu_s"], arrays["sigma_s"]) if "mu_s" in arrays else None
        features = torch.from_numpy(arrays["features"]) if "features" in arrays else None
        return cls(FeatureStatistics(arrays["mu"], arrays["sigma"], int(arrays["count"]) or None), spatial, features)


class FeatureAccumulator:
    """Statistics of the features of a stream of image batches, the pool features of chosen positions
    (``keep``; None: all) and, with ``logits``, every logit (for IS: a sample set, never a reference)."""

    def __init__(self, network: FeatureNetwork, keep: Iterable[int] | None = None, *, logits: bool = False):
        self.network = network
        self.pool = Moments(network.num_features)
        self.spatial: Moments | None = None
        self.keep = None if keep is None else np.asarray(sorted(keep))
        self.kept: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] | None = [] if logits else None
        self.seen = 0

    @torch.no_grad()
    def update(self, crops: torch.Tensor) -> None:
        """Adds a batch of uint8 crops (B, 3, R, R)."""
        self.add(self.network(crops))

    def add(self, features: ImageFeatures) -> None:
        """Adds the features of the next batch of images."""
        self.pool.update(features.pool)
        if features.spatial is not None:
            self.spatial = self.spatial or Moments(features.spatial.shape[1])
            self.spatial.update(features.spatial)
        if self.logits is not None and features.logits is not None:
            self.logits.append(features.logits.cpu())
        positions = np.arange(self.seen, self.seen + len(features.pool))
        chosen = positions if self.keep is None else positions[np.isin(positions, self.keep)]
        self.kept.append(features.pool[torch.from_numpy(chosen - self.seen).to(features.pool.device)].float().cpu())
        self.seen += len(features.pool)

    def reference(self) -> Reference:
        return Reference(self.pool.statistics(), self.spatial and self.spatial.statistics(), torch.cat(self.kept))


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


def _cached(key: dict, work_dir: str | Path | None) -> Path:
    return Path(work_dir or default_work_dir()) / "fid-references" / f"{sha256_json(key | {'version': CACHE_VERSION})}.npz"


def reference_from_source(
    source: str | ImageSource,
    network: FeatureNetwork,
    resolution: int,
    *,
    work_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
) -> Reference:
    """Statistics of a source's ADM crops at R, and the pool features of 10,000 evenly spaced images (all if fewer).

    Cached under ``work_dir/fid-references/`` by (source fingerprint, feature network, R).
    """
    source = open_source(source) if isinstance(source, str) else source
    cached = _cached({"source": source.fingerprint(), "features": network.fingerprint(), "resolution": resolution}, work_dir)
    if cached.exists():
        return Reference.load(cached)
    keep = np.unique(np.linspace(0, len(source) - 1, min(len(source), PR_REFERENCE_IMAGES)).round().astype(int))
    accumulator = FeatureAccumulator(network, keep)
    with progress_bar(f"reference features {source.spec}", total=len(source)) as advance:
        for crops, _ in source_batches(source, resolution, batch_size=batch_size, workers=workers):
            accumulator.update(crops.to(device))
            advance(len(crops))
    if accumulator.seen < 2:
        raise UserError(f"{source.spec} has {accumulator.seen} readable image(s): reference statistics need at least 2")
    reference = accumulator.reference()
    reference.save(cached)
    return reference


def reference_from_npz(
    path: str | Path, network: FeatureNetwork, *, work_dir: str | Path | None = None, device: torch.device | str = "cpu", batch_size: int = 256
) -> Reference:
    """An ADM reference batch: its ``mu``/``sigma`` (and ``mu_s``/``sigma_s``) where they fit the features, its images' features for the rest.

    The statistics in ADM's files are Inception's: with another feature network they do not fit
    and the file's images (``arr_0``) stand for the reference. The images' features are cached by
    (file sha256, feature network).
    """
    names = array_names(path)
    arrays = read_arrays(path, ("mu", "sigma", "mu_s", "sigma_s"))
    fits = "mu" in arrays and arrays["mu"].shape == (network.num_features,)
    if IMAGES not in names and not fits:
        raise UserError(
            f"{path} holds neither images ({IMAGES}) nor statistics of {network.num_features} features (mu, sigma)"
            + (f": its mu has {arrays['mu'].shape[0]}" if "mu" in arrays else "")
        )
    images = _npz_reference_images(Path(path), network, work_dir=work_dir, device=device, batch_size=batch_size) if IMAGES in names else None
    statistics = FeatureStatistics(arrays["mu"], arrays["sigma"]) if fits else images.statistics
    spatial = FeatureStatistics(arrays["mu_s"], arrays["sigma_s"]) if fits and "mu_s" in arrays else images and images.spatial
    return Reference(statistics, spatial, images and images.features)


def _npz_reference_images(path: Path, network: FeatureNetwork, *, work_dir: str | Path | None, device: torch.device | str, batch_size: int) -> Reference:
    cached = _cached({"npz": sha256_file(path), "features": network.fingerprint()}, work_dir)
    if cached.exists():
        return Reference.load(cached)
    images, accumulator = ImageBatches(path), FeatureAccumulator(network)
    with progress_bar(f"reference features {path.name}", total=len(images)) as advance:
        for batch in images.batches(batch_size):
            accumulator.update(torch.from_numpy(batch).permute(0, 3, 1, 2).to(device))  # (B, 3, H, W)
            advance(len(batch))
    reference = accumulator.reference()
    reference.save(cached)
    return reference


def load_reference(reference: str | ImageSource, network: FeatureNetwork, resolution: int, **options) -> Reference:
    """An ADM ``.npz`` reference batch, or the cached features of an image source (``options`` as ``reference_from_source``)."""
    if isinstance(reference, str) and reference.endswith(".npz"):
        if not Path(reference).is_file():
            raise UserError(f"no reference file {reference}")
        options.pop("workers", None)
        return reference_from_npz(reference, network, **options)
    return reference_from_source(reference, network, resolution, **options)


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


def score_samples(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    total: int,
    network: FeatureNetwork,
    reference: Reference | None,
    *,
    classifier: nn.Module | None = None,
    device: torch.device | str = "cpu",
    context: distributed.Context | None = None,
) -> dict | None:
    """The metrics of uint8 sample batches (B, 3, R, R) with their labels (B,) (None: unknown) against ``reference``.

    Only one batch of images is held; the pool features (N × D floats) and logits are kept for
    precision/recall and IS. Under ``torchrun`` (``context``) ``batches`` are this rank's, one per
    round of :meth:`~d2c_pack.core.distributed.Context.batches` (empty ones included); rank 0, the only
    one with the ``reference``, gathers every rank's features and returns the metrics, the other
    ranks None.
    """
    context = context or distributed.Context(0, 1, torch.device(device))
    if reference is not None and reference.statistics.mu.shape != (network.num_features,):
        raise UserError(f"the reference statistics have {reference.statistics.mu.shape[0]} features, the feature network gives {network.num_features}")
    accumulator = FeatureAccumulator(network, logits=True)
    correct = labelled = 0
    with contextlib.ExitStack() as stack, torch.no_grad():
        advance = stack.enter_context(progress_bar("eval", total=total)) if context.is_main else None
        for crops, labels in batches:
            crops = crops.to(device)
            features = network(crops) if len(crops) else None
            hits = None
            if features is not None and classifier is not None and labels is not None:
                hits = (classifier_predictions(classifier, crops, crops.shape[-1]) == labels.to(crops.device)).to(torch.uint8)  # (B,)
            # One batch at a time and in rank order: rank 0 adds them as one process would.
            parts = [context.gather(None if features is None else getattr(features, name)) for name in ("pool", "spatial", "logits")]
            hits = context.gather(hits)
            if not context.is_main:
                continue
            for pool, spatial, logits in itertools.zip_longest(*parts):
                accumulator.add(ImageFeatures(pool, spatial, logits))
                advance(len(pool))
            correct += sum(int(h.sum()) for h in hits)
            labelled += sum(len(h) for h in hits)
    if not context.is_main:
        return None
    if accumulator.seen < 2:
        raise UserError(f"FID needs at least 2 samples, got {accumulator.seen}")
    samples = accumulator.reference()
    is_mean, is_std = inception_score(torch.cat(accumulator.logits)) if accumulator.logits else (None, None)
    pr = reference.features is not None and min(len(samples.features), len(reference.features)) > 3
    precision, recall = precision_recall(samples.features.to(device), reference.features.to(device)) if pr else (None, None)
    return {
        "fid": frechet_distance(samples.statistics, reference.statistics),
        "sfid": frechet_distance(samples.spatial, reference.spatial) if samples.spatial and reference.spatial else None,
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "precision": precision,
        "recall": recall,
        "accuracy": correct / labelled if labelled else None,
        "num_samples": accumulator.seen,
        "reference_images": reference.statistics.count,
        "reference_pr_images": None if reference.features is None else len(reference.features),
    }


def evaluate(
    checkpoint: str | Path,
    *,
    reference: str | ImageSource,
    features: str = INCEPTION,
    num_samples: int = 50_000,
    sampling: Sampling = Sampling(),
    device: str = "auto",
    inception_weights: str | Path | None = None,
    work_dir: str | Path | None = None,
    workers: int = 0,
    vae: str | None = None,
    num_heads: int | None = None,
) -> dict | None:
    """The metrics of ``num_samples`` samples of a model against ``reference`` (see ``score_samples``).

    Labels are drawn as ``sampling.labels`` says (uniformly at random, DiT/SiT/REPA's sampling, or
    ``balanced``, i mod C); sample i has the noise of (sampling.seed, i), as in ``sample_npz``.
    ``sampling.batch_size`` is also the feature network's batch. ``device``: 'auto' is the GPU if
    any, else the CPU (under ``torchrun``, this rank's GPU). ``num_heads``: the attention heads of a ``.pt`` whose width
    is not a DiT/SiT size. The result holds the metrics and every
    setting they depend on; None on the ranks other than 0.
    """
    if num_samples < 2:
        raise UserError(f"--num-samples must be at least 2 for FID, got {num_samples}")
    context = distributed.init(device)
    model, config, class_text = load_for_sampling(checkpoint, context.device, vae=vae, num_heads=num_heads)
    resolution = config.image_size
    targets = sample_labels(num_samples, config.num_classes, sampling.labels, sampling.seed)
    parts = context.batches(num_samples, sampling.batch_size)
    images = generate_batches(model, config, targets, sampling, class_text=class_text, batches=parts)
    network = load_features(features, resolution, inception_weights=inception_weights, device=context.device)
    statistics = _main_reference(
        context, reference, network, resolution, work_dir=work_dir, device=context.device, batch_size=sampling.batch_size, workers=workers
    )  # fmt: skip
    batches = ((to_uint8(batch), targets[part.start : part.stop]) for part, batch in zip(parts, images))
    classifier = load_classifier(features, config.num_classes, context.device)
    metrics = score_samples(batches, num_samples, network, statistics, classifier=classifier, device=context.device, context=context)
    if metrics is None:
        return None
    settings = {"samples": str(checkpoint), "reference": _spec(reference), "features": features, "resolution": resolution}
    return metrics | settings | sampling.record()


def evaluate_npz(
    samples: str | Path,
    *,
    reference: str | ImageSource,
    features: str = INCEPTION,
    num_classes: int | None = None,
    device: str = "auto",
    batch_size: int = 256,
    inception_weights: str | Path | None = None,
    work_dir: str | Path | None = None,
    workers: int = 0,
) -> dict | None:
    """The metrics of the images of an ADM sample ``.npz`` (no model needed).

    With encoder features whose classifier has ``num_classes`` outputs (default: the file's
    largest label + 1) and labels in ``arr_1``, also the classifier accuracy. ``device``: 'auto'
    is the GPU if any, else the CPU. Under ``torchrun`` each rank reads and scores its share of the
    batches; ranks other than 0 return None.
    """
    context = distributed.init(device)
    images = ImageBatches(samples)
    resolution = images.shape[1]
    targets = read_arrays(samples, (LABELS,)).get(LABELS)
    if targets is not None and len(targets) != len(images):
        raise UserError(f"{samples}: {len(targets)} labels ({LABELS}) for {len(images)} images ({IMAGES})")
    targets = None if targets is None else torch.from_numpy(targets.astype(np.int64))
    network = load_features(features, resolution, inception_weights=inception_weights, device=context.device)
    statistics = _main_reference(context, reference, network, resolution, work_dir=work_dir, device=context.device, batch_size=batch_size, workers=workers)
    classes = num_classes or (int(targets.max()) + 1 if targets is not None and len(targets) else 0)
    classifier = load_classifier(features, classes, context.device) if targets is not None else None
    parts = context.batches(len(images), batch_size)
    batches = (
        (torch.from_numpy(batch).permute(0, 3, 1, 2), None if targets is None else targets[part.start : part.stop])
        for part, batch in zip(parts, images.read(parts))
    )  # (B, 3, H, W) uint8
    metrics = score_samples(batches, len(images), network, statistics, classifier=classifier, device=context.device, context=context)
    if metrics is None:
        return None
    return metrics | {"samples": str(samples), "reference": _spec(reference), "features": features, "resolution": resolution}


def _main_reference(context: distributed.Context, reference: str | ImageSource, *args, **options) -> Reference | None:
    """``load_reference`` on rank 0, which alone needs it (and so alone computes and caches it); None elsewhere."""
    return load_reference(reference, *args, **options) if context.is_main else None


def _spec(reference: str | ImageSource) -> str:
    return reference if isinstance(reference, str) else reference.spec


def subset_defaults(data: str) -> tuple[str, str]:
    """The reference and features ``eval --data DATA`` uses unless told otherwise.

    Reference: the source the subset was condensed from (its manifest), so FID says how close the
    samples come to the full data. Features: the subset's own visual encoder when it is a demo model
    (Inception means nothing on 32-pixel digits), else Inception. A dataset without a d2c-pack
    manifest names neither: that is an error, not a guess.
    """
    from d2c_pack.publish.verify import locate, read_manifest

    try:
        manifest = read_manifest(locate(data))
    except UserError as err:
        raise UserError(f"{err}; eval --data takes its reference from a d2c-pack build's manifest: pass --reference (and --features) instead") from None
    encoder = manifest["inputs"].get("visual_encoder") or ""
    # A local source is not named in the manifest (no published file holds a local path): then the subset itself.
    return manifest["source"]["spec"] or f"hf:{data}", encoder if encoder.startswith("demo:") else INCEPTION
