"""The ADM suite (FID, sFID, IS, precision/recall) and classifier accuracy: formulas as the ADM
evaluator defines them, exact on identical sets, sensitive to degradation, offline-safe."""

from __future__ import annotations

import itertools
import json
import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
import torch_fidelity.metric_prc as prc
from conftest import copy_digits_reference, one_and_two_processes
from PIL import Image
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from d2c_pack.core.errors import UserError
from d2c_pack.diffusion.sampling import Sampling
from d2c_pack.evaluation import evaluator, metrics
from d2c_pack.evaluation.adm_npz import ImageBatches
from d2c_pack.evaluation.evaluator import (
    FeatureAccumulator,
    Reference,
    evaluate,
    evaluate_npz,
    inception_network,
    load_classifier,
    load_features,
    load_reference,
    reference_from_npz,
    reference_from_source,
    score_samples,
    source_batches,
)
from d2c_pack.evaluation.metrics import FeatureStatistics, Moments, frechet_distance, inception_score, precision_recall
from d2c_pack.evaluation.sample import sample_labels, sample_npz
from d2c_pack.sources.image_source import open_source

ENCODER = "demo:digits-encoder"


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch-fidelity's Inception v3 with random weights (He-initialised so features do not vanish), saved like the real file."""
    with pytest.MonkeyPatch.context() as patch:  # build the module without its download
        patch.setattr(fidelity_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        network = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.manual_seed(0)
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    path = tmp_path_factory.mktemp("inception") / evaluator.INCEPTION_WEIGHTS_NAME
    torch.save(network.state_dict(), path)
    return path


def fid_of(batches, network, reference: Reference) -> float:
    return score_samples(((crops, None) for crops in batches), 0, network, reference)["fid"]


# --- the formulas, against transcriptions of openai/guided-diffusion's evaluations/evaluator.py ---


def adm_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))  # ADM passes disp=False, which newer scipy deprecates
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    preds = np.exp(logits - logits.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def adm_batch_pairwise_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """ADM's ``_batch_pairwise_distances`` in the inputs' dtype, as TensorFlow runs it on a GPU (sums and matmuls accumulated in float32)."""
    norm_u = np.square(u).sum(1, dtype=np.float32).astype(u.dtype).reshape(-1, 1)
    norm_v = np.square(v).sum(1, dtype=np.float32).astype(v.dtype).reshape(1, -1)
    return np.maximum(norm_u - 2 * (u.astype(np.float32) @ v.astype(np.float32).T).astype(u.dtype) + norm_v, 0.0)


def adm_distance_block(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """ADM's ``DistanceBlock.distance_block``: float16 distances when all finite, else float32 ones."""
    with np.errstate(over="ignore", invalid="ignore"):  # TensorFlow overflows silently
        distances = adm_batch_pairwise_distances(u.astype(np.float16), v.astype(np.float16))
    if np.isfinite(distances).all():
        return distances.astype(np.float32)
    return adm_batch_pairwise_distances(u.astype(np.float32), v.astype(np.float32))


def adm_precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = 3, batch: int = 10_000) -> tuple[float, float]:
    """ADM's ``ManifoldEstimator``: ``manifold_radii`` of both sets, then ``evaluate_pr`` (reference first), in blocks of ``batch``."""

    def manifold_radii(features):
        radii = np.zeros(len(features), dtype=np.float32)
        for begin1 in range(0, len(features), batch):
            row = np.concatenate([adm_distance_block(features[begin1 : begin1 + batch], features[b2 : b2 + batch]) for b2 in range(0, len(features), batch)], 1)
            radii[begin1 : begin1 + batch] = np.partition(row, np.arange(k + 1), axis=1)[:, k]
        return radii

    radii_1, radii_2 = manifold_radii(reference), manifold_radii(samples)
    reference_in, samples_in = np.zeros(len(reference), bool), np.zeros(len(samples), bool)
    for begin_1 in range(0, len(reference), batch):
        for begin_2 in range(0, len(samples), batch):
            dist32 = adm_distance_block(reference[begin_1 : begin_1 + batch], samples[begin_2 : begin_2 + batch])
            reference_in[begin_1 : begin_1 + batch] |= (dist32 <= radii_2[begin_2 : begin_2 + batch][None, :]).any(1)
            samples_in[begin_2 : begin_2 + batch] |= (dist32 <= radii_1[begin_1 : begin_1 + batch][:, None]).any(0)
    return float(samples_in.astype(np.float64).mean()), float(reference_in.astype(np.float64).mean())


def test_moments_and_frechet_distance_match_numpy_and_the_adm_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(1.0, 2.0, size=(300, 16)) @ rng.normal(size=(16, 16))
    moments = Moments(16)
    for part in np.array_split(a, 7):
        moments.update(torch.from_numpy(part).float())
    statistics = moments.statistics()
    seen = a.astype(np.float32).astype(np.float64)  # the values the float32 batches hold
    np.testing.assert_allclose(statistics.mu, seen.mean(0), rtol=1e-12)
    np.testing.assert_allclose(statistics.sigma, np.cov(seen, rowvar=False), rtol=1e-10, atol=1e-12)
    other = FeatureStatistics(b.mean(0), np.cov(b, rowvar=False))
    expected = adm_frechet_distance(statistics.mu, statistics.sigma, other.mu, other.sigma)
    assert frechet_distance(statistics, other) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(statistics, statistics) == pytest.approx(0, abs=1e-6)


def test_inception_score_uses_consecutive_splits_of_5000_as_adm() -> None:
    logits = torch.randn(12_345, 1008, generator=torch.Generator().manual_seed(0)) * 3
    logits[:5000, :10] += 8  # splits that differ: shuffling or equal splits would change the mean
    mean, std = inception_score(logits)
    assert mean == pytest.approx(adm_inception_score(logits.double().numpy()), rel=1e-9)
    assert std > 0


def test_precision_recall_match_the_adm_manifold_estimator() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(400, 8)).astype(np.float32)
    samples = np.concatenate([rng.normal(size=(250, 8)), rng.normal(3.0, 0.5, size=(150, 8))]).astype(np.float32)  # 150 off the manifold
    precision, recall = precision_recall(torch.from_numpy(samples), torch.from_numpy(reference))
    assert (precision, recall) == adm_precision_recall(reference, samples)
    assert 0.4 < precision < 0.7 and recall > 0.5  # the off-manifold samples are not precise
    with pytest.raises(ValueError, match="k = 3"):
        precision_recall(torch.from_numpy(samples[:3]), torch.from_numpy(reference))


def test_precision_recall_use_adms_float16_distances_not_float32() -> None:
    """1,500 points in 32 dimensions: float32 distances (torch-fidelity's) move precision by 2e-3; ADM's float16 ones are matched exactly."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1500, 32)).astype(np.float32) * 2
    samples = (rng.normal(size=(1500, 32)) * 1.1).astype(np.float32) * 2
    ours = precision_recall(torch.from_numpy(samples), torch.from_numpy(reference))
    assert ours == adm_precision_recall(reference, samples)
    float32 = prc.calculate_precision_recall_part(torch.from_numpy(samples), torch.from_numpy(reference), neighborhood=3, batch_size=10_000)
    assert abs(ours[0] - float32[0]) > 1e-3  # what the float16 rounding changes here


def test_precision_recall_fall_back_to_float32_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block whose float16 distances overflow is computed in float32, the others stay float16, as ADM decides per block."""
    monkeypatch.setattr(metrics, "PR_BATCH", 200)
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(500, 16)).astype(np.float32) * 3
    reference[200:400] *= 60  # ‖x‖² ≈ 5e5 > 65504: these blocks overflow float16
    samples = (rng.normal(size=(450, 16)) * 3.3).astype(np.float32)
    samples[:100] *= 60
    ours = precision_recall(torch.from_numpy(samples), torch.from_numpy(reference))
    assert ours == adm_precision_recall(reference, samples, batch=200)
    assert not torch.isfinite(metrics._squared_distances(torch.from_numpy(reference[200:400]).half(), torch.from_numpy(samples).half())).all()


# --- features and references ---


def test_fid_is_zero_on_the_reference_set_and_grows_with_noise(digits_reference, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference set scores FID 0, precision = recall = 1, and the demo encoder's classifier names over 95% of the real
    digits; FID grows with every step of added noise; a computed reference is cached and read back without images."""
    work, reference = digits_reference  # computed by reference_from_source from the images: the cache was empty
    network = load_features(ENCODER, 32)
    digits = list(source_batches(open_source("demo:digits"), 32))
    assert reference.statistics.count == 1797 and reference.statistics.mu.shape == (network.num_features,)
    assert reference.features.shape == (1797, network.num_features) and reference.spatial is None
    metrics = score_samples(((c, l) for c, l in digits), 1797, network, reference, classifier=load_classifier(ENCODER, 10))
    assert abs(metrics["fid"]) < 1e-6 and metrics["precision"] == metrics["recall"] == 1.0
    assert metrics["accuracy"] > 0.95 and metrics["sfid"] is None and metrics["inception_score"] is None
    assert load_classifier(ENCODER, num_classes=7) is None  # its classes are not the model's

    crops = [batch for batch, _ in digits]
    generator = torch.Generator().manual_seed(0)
    distances = []
    for strength in (4, 12, 36, 100):
        noisy = [(c.float() + strength * torch.randn(c.shape, generator=generator)).clamp(0, 255).round().to(torch.uint8) for c in crops]
        distances.append(fid_of(noisy, network, reference))
    assert all(a < b for a, b in itertools.pairwise(distances)), distances
    assert distances[0] > 0

    # A second call reads the cache: no image is looked at.
    monkeypatch.setattr(evaluator, "source_batches", lambda *args, **kwargs: pytest.fail("reference features recomputed"))
    cached = reference_from_source("demo:digits", network, 32, work_dir=work)
    np.testing.assert_array_equal(cached.statistics.sigma, reference.statistics.sigma)
    assert torch.equal(cached.features, reference.features)
    assert len(list((work / "fid-references").glob("*.npz"))) == 1


def test_a_large_source_keeps_10000_evenly_spaced_images_for_precision_recall() -> None:
    network = load_features(ENCODER, 32)
    crops = [batch for batch, _ in itertools.islice(source_batches(open_source("demo:digits"), 32, batch_size=64), 4)]
    keep = np.unique(np.linspace(0, 255, 100).round().astype(int))  # as reference_from_source picks 10,000 of more
    accumulator = FeatureAccumulator(network, keep)
    for batch in crops:
        accumulator.update(batch)
    with torch.no_grad():
        everything = torch.cat([network(batch).pool for batch in crops])
    assert torch.equal(accumulator.reference().features, everything[torch.from_numpy(keep)])


def test_inception_spatial_features_are_mixed_6_conv_first_7_channels(inception_weights: Path) -> None:
    network = load_features("inception", 32, inception_weights=inception_weights)
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = network(images)
    assert features.pool.shape == (2, 2048) and features.logits.shape == (2, 1008) and features.spatial.shape == (2, 17 * 17 * 7)

    # The TensorFlow graph up to mixed_6/conv, step by step through torch-fidelity's modules.
    inception = network.network
    with torch.no_grad():
        x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        x = (x - 128) / 128
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2"):
            x = getattr(inception, name)(x)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"):
            x = getattr(inception, name)(x)
        conv = inception.Mixed_6d.branch1x1
        mixed_6_conv = F.relu(conv.bn(conv.conv(x)))  # (N, 192, 17, 17)
    expected = mixed_6_conv.permute(0, 2, 3, 1)[..., :7].reshape(2, -1)  # the evaluator's NHWC [..., :7]
    torch.testing.assert_close(features.spatial, expected)


# --- whole evaluations ---


def test_evaluate_demo_model_with_encoder_features(tmp_path: Path, digits_reference) -> None:
    result = evaluate(
        "demo:digits", reference="demo:digits", features=ENCODER, num_samples=30, sampling=Sampling(steps=4, cfg_scale=1.5, batch_size=16),
        work_dir=copy_digits_reference(digits_reference, tmp_path),
    )  # fmt: skip
    assert math.isfinite(result["fid"]) and result["fid"] > 0
    assert 0.7 <= result["accuracy"] <= 1  # the demo model draws recognisable digits, even in 4 steps
    assert 0 < result["precision"] <= 1 and 0 < result["recall"] <= 1
    assert result["inception_score"] is None and result["sfid"] is None
    assert result["num_samples"] == 30 and result["resolution"] == 32 and result["labels"] == "random"


def test_sample_labels_are_uniform_random_by_default_and_balanced_on_request() -> None:
    labels = sample_labels(50_000, 1000, "random", seed=0)
    counts = np.bincount(labels.numpy(), minlength=1000)
    assert counts.min() > 20 and counts.max() < 90 and len(set(counts.tolist())) > 10  # multinomial, not i mod C
    assert torch.equal(labels[:100], sample_labels(100, 1000, "random", seed=0))  # a prefix: N does not reorder them
    assert not torch.equal(labels[:100], sample_labels(100, 1000, "random", seed=1))
    assert sample_labels(13, 10, "balanced", seed=5).tolist() == [i % 10 for i in range(13)]
    with pytest.raises(UserError, match="--labels"):
        sample_labels(3, 10, "even", seed=0)


def test_a_sample_npz_scores_as_the_model_it_came_from(tmp_path: Path, digits_reference) -> None:
    settings = dict(num_samples=12, sampling=Sampling(steps=3, cfg_scale=1.5, seed=2, batch_size=5))  # batches of 5, 5 and 2
    path = sample_npz("demo:digits", tmp_path / "samples.npz", **settings)
    work = copy_digits_reference(digits_reference, tmp_path / "work")
    from_model = evaluate("demo:digits", reference="demo:digits", features=ENCODER, work_dir=work, **settings)
    from_file = evaluate_npz(path, reference="demo:digits", features=ENCODER, batch_size=7, work_dir=work)  # 7 and 5
    for key in ("fid", "precision", "recall", "accuracy", "num_samples"):
        assert from_file[key] == pytest.approx(from_model[key], abs=1e-6), key
    assert from_file["samples"] == str(path) and from_file["resolution"] == 32


def write_reference_batch(path: Path, images: np.ndarray, **statistics: np.ndarray) -> Path:
    np.savez(path, arr_0=images, **statistics)
    return path


def test_adm_reference_batch_gives_fid_from_its_statistics_and_precision_recall_from_its_images(
    tmp_path: Path, inception_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    reference_images = rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    sample_images = np.clip(reference_images.astype(int) + rng.integers(-40, 40, reference_images.shape), 0, 255).astype(np.uint8)
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=sample_images)
    network = load_features("inception", 24, inception_weights=inception_weights)
    with torch.no_grad():
        real = network(torch.from_numpy(reference_images).permute(0, 3, 1, 2))
        fake = network(torch.from_numpy(sample_images).permute(0, 3, 1, 2))
    # The (samples, reference) statistics of each Fréchet distance, and the distance reported for them. Its formula is
    # tested above and on Inception's 2048 and 2023 features below; here each call answers its own number.
    compared = []
    monkeypatch.setattr(evaluator, "frechet_distance", lambda a, b: compared.append((a, b)) or 100.0 + len(compared))

    # Statistics of a "whole training set" that are not the images': FID and sFID must use them.
    mu, sigma, mu_s, sigma_s = rng.normal(size=2048), np.eye(2048) * 0.01, rng.normal(size=2023), np.eye(2023) * 0.02
    batch = write_reference_batch(tmp_path / "VIRTUAL_ref.npz", reference_images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    result = evaluate_npz(samples, reference=str(batch), features="inception", inception_weights=inception_weights, batch_size=4, work_dir=tmp_path)
    (pool_samples, pool_reference), (spatial_samples, spatial_reference) = compared
    assert (result["fid"], result["sfid"]) == (101.0, 102.0)  # the pool pair's distance is the FID, the spatial pair's the sFID
    assert np.array_equal(pool_reference.mu, mu) and np.array_equal(pool_reference.sigma, sigma)
    assert np.array_equal(spatial_reference.mu, mu_s) and np.array_equal(spatial_reference.sigma, sigma_s)
    for statistics, features in ((pool_samples, fake.pool), (spatial_samples, fake.spatial)):
        np.testing.assert_allclose(statistics.mu, features.double().mean(0).numpy(), rtol=1e-6)
        np.testing.assert_allclose(statistics.sigma, np.cov(features.double().numpy(), rowvar=False), rtol=1e-5, atol=1e-9)
    expected_pr = adm_precision_recall(real.pool.double().numpy(), fake.pool.double().numpy())
    assert (result["precision"], result["recall"]) == pytest.approx(expected_pr, abs=1e-6)
    assert result["inception_score"] == pytest.approx(adm_inception_score(fake.logits.double().numpy()), rel=1e-6)
    assert result["reference_pr_images"] == 6 and result["accuracy"] is None

    # Without statistics the images stand for the reference, as the ADM evaluator does.
    bare = reference_from_npz(write_reference_batch(tmp_path / "images_only.npz", reference_images), network, work_dir=tmp_path)
    np.testing.assert_allclose(bare.statistics.mu, real.pool.double().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(bare.spatial.sigma, np.cov(real.spatial.double().numpy(), rowvar=False), rtol=1e-5, atol=1e-9)
    assert torch.equal(bare.features, real.pool)


def test_reference_npz_without_usable_contents_is_a_user_error(tmp_path: Path) -> None:
    network = load_features(ENCODER, 32)
    np.savez(tmp_path / "inception_stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # Inception's, no images
    with pytest.raises(UserError, match="neither images .* nor statistics of 64 features.*its mu has 2048"):
        load_reference(str(tmp_path / "inception_stats.npz"), network, 32, work_dir=tmp_path)
    with pytest.raises(UserError, match="no reference file"):
        load_reference(str(tmp_path / "missing.npz"), network, 32)
    np.savez(tmp_path / "floats.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(UserError, match="must be uint8 images"):
        ImageBatches(tmp_path / "floats.npz")


def test_inception_suite_from_local_weights_on_an_image_folder(tmp_path: Path, inception_weights: Path) -> None:
    folder = tmp_path / "reference"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            pixels = np.random.default_rng([ord(label), i]).integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    result = evaluate(
        "demo:digits", reference=str(folder), features="inception", inception_weights=inception_weights,
        num_samples=4, sampling=Sampling(steps=2), work_dir=tmp_path / "work",
    )  # fmt: skip
    assert math.isfinite(result["fid"]) and result["fid"] > 0 and math.isfinite(result["sfid"]) and result["sfid"] > 0
    assert math.isfinite(result["inception_score"]) and result["inception_score"] >= 1
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["accuracy"] is None and result["reference_images"] == 4 and result["num_samples"] == 4  # precision/recall need k + 1 = 4


def test_missing_inception_weights_offline_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached download
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UserError, match="--inception-weights"):
        inception_network(None)
    with pytest.raises(UserError, match="no Inception weights"):
        inception_network(tmp_path / "missing.pth")
    (tmp_path / "other.pth").write_bytes(b"not a state dict")
    with pytest.raises(UserError, match="weights-only"):
        inception_network(tmp_path / "other.pth")
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "small.pth")
    with pytest.raises(UserError, match="does not hold torch-fidelity's Inception"):
        inception_network(tmp_path / "small.pth")


def test_eval_data_takes_its_reference_from_the_manifest_and_never_guesses(tmp_path: Path) -> None:
    built = tmp_path / "built"
    (built / "d2c").mkdir(parents=True)
    manifest = {"source": {"spec": "demo:digits"}, "inputs": {"visual_encoder": ENCODER}}
    (built / "d2c" / "manifest.json").write_text(json.dumps(manifest))
    assert evaluator.subset_defaults(str(built)) == ("demo:digits", ENCODER)
    (built / "d2c" / "manifest.json").write_text(json.dumps(manifest | {"inputs": {"visual_encoder": "facebook/dinov2-base"}}))
    assert evaluator.subset_defaults(str(built)) == ("demo:digits", evaluator.INCEPTION)
    # A dataset d2c-pack did not build says nothing of the source it came from: no "hf:DATA with Inception" guess.
    (built / "d2c" / "manifest.json").unlink()
    with pytest.raises(UserError, match="no d2c/manifest.json.*pass --reference"):
        evaluator.subset_defaults(str(built))
    with pytest.raises(UserError, match="pass --reference"):
        evaluator.subset_defaults(str(tmp_path / "missing"))


def test_torchrun_eval_gives_the_metrics_of_one_process(tmp_path: Path, digits_reference) -> None:
    """2 ranks sample and score 13 samples in batches of 4 (rank 1's second batch has 1): the same JSON to the bit, one report.
    Both read the digits' reference features from the default cache, as the second evaluation of a source does."""
    copy_digits_reference(digits_reference, tmp_path / "cache")
    args = [
        "eval", "demo:digits", "--reference", "demo:digits", "--features", ENCODER, "--num-samples", "13", "--batch-size", "4",
        "--sampling-steps", "2", "--cfg-scale", "1.5", "--device", "cpu", "--workers", "0",
    ]  # fmt: skip
    _, two = one_and_two_processes(args, ["--json", str(tmp_path / "one.json")], ["--json", str(tmp_path / "two.json")], env={"D2C_PACK_CACHE": str(tmp_path / "cache")})
    results = json.loads((tmp_path / "two.json").read_text())
    assert results == json.loads((tmp_path / "one.json").read_text()) and results["num_samples"] == 13
    assert results["precision"] is not None and results["accuracy"] is not None
    assert two.stdout.count("fid") == 1  # rank 0 alone reports


def test_npz_images_are_read_by_ranges(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    reader = ImageBatches(tmp_path / "samples.npz")
    parts = [range(0, 3), range(6, 9), range(10, 10)]  # a rank's share: skips 3..5, then an empty last batch
    batches = list(reader.read(parts))
    assert [len(batch) for batch in batches] == [3, 3, 0]
    assert np.array_equal(batches[0], images[0:3]) and np.array_equal(batches[1], images[6:9])
    assert np.array_equal(np.concatenate(list(reader.batches(4))), images)
