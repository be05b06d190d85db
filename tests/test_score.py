"""The diffusion difficulty score: exact formula on both paths, independence from batching, cache, resume, torchrun."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CLASS_SIZES, make_official_scorer, one_and_two_processes, one_thread, run_cli
from torch.overrides import TorchFunctionMode

import d2c_pack
from d2c_pack.core.errors import UserError
from d2c_pack.models.checkpoint import load_backbone
from d2c_pack.selection.score import DifficultyScorer, ddpm_alphas_cumprod, image_noise, read_scores, score_features, score_source, stratified_timesteps
from d2c_pack.selection.settings import ScoreConfig
from d2c_pack.sources.image_source import open_source
from d2c_pack.sources.preprocess import center_crop_adm, image_to_tensor

NUM_IMAGES = sum(CLASS_SIZES.values())  # readable images of the test folder (plus one corrupt file)


@pytest.fixture
def folder(tiny_images: Path) -> Path:
    return tiny_images


@pytest.fixture
def scorer(tiny_scorer: Path) -> Path:
    """``make_official_scorer()``: a tiny SiT of 3 classes at 16 px (the session's; read only)."""
    return tiny_scorer


def config_for(tmp_path: Path, folder: Path, scorer: Path, **overrides) -> ScoreConfig:
    settings = dict(
        source=str(folder), scorer=str(scorer), resolution=16, timesteps=4, batch_size=5, chunk_size=8,
        workers=0, device="cpu", work=str(tmp_path / "work"),
    )  # fmt: skip
    return ScoreConfig(**(settings | overrides))


def reference_losses(scorer_path: Path, folder: Path, timesteps: int, seed: int) -> dict[str, np.ndarray]:
    """Per-image, per-timestep losses computed one image and one timestep at a time, straight from DESIGN §3.2."""
    model, config = load_backbone(scorer_path)
    times = stratified_timesteps(config.prediction, timesteps)
    losses = {}
    for record in open_source(str(folder)).iter_records():
        x = image_to_tensor(center_crop_adm(record.image, 16))[None]  # pixel space: z = x
        noise = image_noise(seed, record.source_id, timesteps, tuple(x.shape[1:]))
        per_t = []
        for i, t in enumerate(times):
            eps = noise[i][None]
            if config.prediction == "epsilon":
                alpha_bar = ddpm_alphas_cumprod()[t].float()
                z_t, target = alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * eps, eps
            else:
                z_t, target = t * x + (1 - t) * eps, x - eps
            with torch.no_grad():
                out = model(z_t, t.view(1), torch.tensor([record.label]))[:, :3]  # σ channels dropped
            per_t.append(((out - target) ** 2).mean().item())
        losses[record.source_id] = np.array(per_t, dtype=np.float32)
    return losses


def test_stratified_timesteps() -> None:
    assert stratified_timesteps("epsilon", 8).tolist() == [62, 187, 312, 437, 562, 687, 812, 937]
    assert stratified_timesteps("velocity", 4).tolist() == [0.125, 0.375, 0.625, 0.875]


def test_noise_depends_on_seed_id_and_index_only() -> None:
    a = image_noise(0, "cls/a.png", 3, (3, 4, 4))
    assert torch.equal(a, image_noise(0, "cls/a.png", 3, (3, 4, 4)))
    assert torch.equal(a[:2], image_noise(0, "cls/a.png", 2, (3, 4, 4)))  # row i does not depend on |T|
    assert not torch.equal(a, image_noise(1, "cls/a.png", 3, (3, 4, 4)))
    assert not torch.equal(a, image_noise(0, "cls/b.png", 3, (3, 4, 4)))
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("family", ["DiT", "SiT"])
def test_scores_follow_the_formula(tmp_path: Path, folder: Path, family: str) -> None:
    scorer = make_official_scorer(tmp_path / "models", family)
    scores_file = score_source(config_for(tmp_path, folder, scorer, seed=3))
    scores = read_scores(scores_file)
    reference = reference_losses(scorer, folder, timesteps=4, seed=3)
    assert sorted(scores.source_ids) == sorted(reference)
    for i, source_id in enumerate(scores.source_ids):
        np.testing.assert_allclose(scores.losses[i], reference[source_id], rtol=2e-5)
        assert scores.scores[i] == pytest.approx(reference[source_id].mean(), rel=2e-5)
    assert score_features(scores_file).shape == (NUM_IMAGES, 128)  # the scorer's width


def test_corrupt_images_are_listed_not_scored(tmp_path: Path, folder: Path, scorer: Path) -> None:
    scores = read_scores(score_source(config_for(tmp_path, folder, scorer)))
    assert len(scores) == NUM_IMAGES
    assert [(source_id, reason) for _, source_id, reason in scores.errors] == [("bee/broken.jpg", "cannot decode: not a recognised image format")]
    assert np.bincount(scores.labels).tolist() == list(CLASS_SIZES.values())


def test_scores_do_not_depend_on_batching_or_workers(tmp_path: Path, folder: Path, scorer: Path) -> None:
    first = read_scores(score_source(config_for(tmp_path / "a", folder, scorer, batch_size=3)))
    second = read_scores(score_source(config_for(tmp_path / "b", folder, scorer, batch_size=16, workers=2)))
    assert first.source_ids == second.source_ids
    np.testing.assert_allclose(first.losses, second.losses, rtol=1e-5)


def test_loader_workers_started_by_spawn_score_alike(
    tmp_path: Path, folder: Path, scorer: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Workers started by spawn (macOS's default, and Python 3.14's on Linux) unpickle what they run: ``d2c-pack score``
    with 2 of them scores as one process does."""
    in_process = read_scores(score_source(config_for(tmp_path / "a", folder, scorer)))
    args = ["--source", str(folder), "--scorer", str(scorer), "--resolution", "16", "--timesteps", "4", "--batch-size", "5",
            "--chunk-size", "8", "--workers", "2", "--work", str(tmp_path / "b" / "work")]  # fmt: skip
    start_method = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        assert run_cli(monkeypatch, "score", *args) == 0, capsys.readouterr().err[-2000:]
    finally:
        multiprocessing.set_start_method(start_method, force=True)
    spawned = read_scores(next((tmp_path / "b" / "work" / "scores").glob("*/scores.parquet")))
    assert spawned.source_ids == in_process.source_ids
    np.testing.assert_allclose(spawned.losses, in_process.losses, rtol=1e-5)


def test_cache_is_reused_and_keyed(tmp_path: Path, folder: Path, scorer: Path) -> None:
    merged = score_source(config_for(tmp_path, folder, scorer))
    stamp = merged.stat().st_mtime_ns
    assert score_source(config_for(tmp_path, folder, scorer, batch_size=7)) == merged  # batching is not in the key
    assert merged.stat().st_mtime_ns == stamp
    assert score_source(config_for(tmp_path, folder, scorer, seed=1)) != merged
    assert score_source(config_for(tmp_path, folder, scorer, timesteps=2)) != merged


def test_lost_chunks_are_recomputed_and_others_kept(tmp_path: Path, folder: Path, scorer: Path) -> None:
    merged = score_source(config_for(tmp_path, folder, scorer))
    expected = pq.read_table(merged)
    chunks = sorted((merged.parent / "chunks").glob("*.parquet"))
    assert len(chunks) == 5  # 37 listed images in chunks of 8
    stamps = {c: c.stat().st_mtime_ns for c in chunks}
    merged.unlink()
    chunks[2].unlink()
    assert score_source(config_for(tmp_path, folder, scorer)) == merged
    assert pq.read_table(merged).equals(expected)
    for chunk in chunks[:2] + chunks[3:]:
        assert chunk.stat().st_mtime_ns == stamps[chunk]


def run_score(args: list[str], **kwargs) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "d2c_pack", "score", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def cli_args(tmp_path: Path, folder: Path, scorer: Path, work: str) -> list[str]:
    return [
        "--source", str(folder), "--scorer", str(scorer), "--resolution", "16", "--timesteps", "4",
        "--batch-size", "2", "--chunk-size", "4", "--workers", "0", "--device", "cpu", "--work", str(tmp_path / work),
    ]  # fmt: skip


def test_killed_run_resumes_without_recomputing(tmp_path: Path, folder: Path, scorer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``d2c-pack score`` process killed (SIGKILL) after its second chunk: re-run, it keeps those chunks and ends with
    the scores of a run never interrupted. The runs beside the killed one are this process's, on one thread like it."""
    with one_thread():
        assert run_cli(monkeypatch, "score", *cli_args(tmp_path, folder, scorer, "reference")) == 0
    interrupted = run_score(cli_args(tmp_path, folder, scorer, "killed"))
    chunks_dir = next((tmp_path / "reference" / "scores").iterdir()).name
    chunks = tmp_path / "killed" / "scores" / chunks_dir / "chunks"
    deadline = time.monotonic() + 120
    while not (chunks.is_dir() and len(list(chunks.glob("*.parquet"))) >= 2):
        assert interrupted.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    interrupted.send_signal(signal.SIGKILL)
    assert interrupted.wait() == -signal.SIGKILL
    survivors = {c: c.stat().st_mtime_ns for c in chunks.glob("*.parquet")}
    assert 2 <= len(survivors) < 10 and not (chunks.parent / "scores.parquet").exists()
    with one_thread():
        assert run_cli(monkeypatch, "score", *cli_args(tmp_path, folder, scorer, "killed")) == 0
    assert all(c.stat().st_mtime_ns == stamp for c, stamp in survivors.items())
    ours = pq.read_table(chunks.parent / "scores.parquet")
    assert ours.equals(pq.read_table(tmp_path / "reference" / "scores" / chunks_dir / "scores.parquet"))


def test_torchrun_two_processes_equal_one(tmp_path: Path, folder: Path, scorer: Path) -> None:
    args = ["score", *cli_args(tmp_path, folder, scorer, "unused")[:-2]]  # less its --work: each run names its own
    one_and_two_processes(args, ["--work", str(tmp_path / "single")], ["--work", str(tmp_path / "pair")])
    (single_file,) = (tmp_path / "single").glob("scores/*/scores.parquet")
    (pair_file,) = (tmp_path / "pair").glob("scores/*/scores.parquet")
    assert single_file.parent.name == pair_file.parent.name  # the same cache key
    assert pq.read_table(pair_file).equals(pq.read_table(single_file))


def test_scorer_resolution_must_match(tmp_path: Path, folder: Path, scorer: Path) -> None:
    with pytest.raises(UserError, match="set --resolution 16"):
        score_source(config_for(tmp_path, folder, scorer, resolution=32))


@pytest.mark.parametrize(("field", "value"), [("timesteps", 0), ("seed", -1), ("prediction", "x0"), ("chunk_size", 0)])
def test_bad_settings_are_refused(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(UserError, match=field.replace("_", "-") if field != "seed" else "seed"):
        ScoreConfig(source="demo:digits", work=str(tmp_path), **{field: value})


def test_streamed_hub_source_scores_like_random_access(tmp_path: Path, folder: Path, scorer: Path) -> None:
    repo = streamed_repo(tmp_path, folder, shards=1)
    mapped = score_source(config_for(tmp_path / "mapped", f"hf:{repo}", scorer, workers=2))
    streamed = score_source(config_for(tmp_path / "streamed", f"hf:{repo}", scorer, streaming=True, workers=2))
    assert pq.read_table(streamed).equals(pq.read_table(mapped))
    assert pq.read_table(mapped).num_rows == NUM_IMAGES + 1
    assert read_scores(streamed).errors[0][1] == "bee/broken.jpg"


PROJECT = str(Path(d2c_pack.__file__).parent)
HOST_READS = (torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.item, torch.Tensor.tolist)


class ScoringTrace(TorchFunctionMode):
    """Records, in order, every call of the scorer (a batch launched), every call in d2c_pack's code that reads a tensor on the
    host (each a wait on a GPU), and the dtypes that image batches (4-D) are moved or turned into floats in."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.image_ops: list[tuple[str, torch.dtype]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(PROJECT) and func in HOST_READS:
            self.events.append("read")
        if caller.endswith("score.py") and func in (torch.Tensor.to, torch.Tensor.float) and args[0].dim() == 4:
            self.image_ops.append((func.__name__, args[0].dtype))
        return func(*args, **(kwargs or {}))


def test_a_batch_is_read_back_after_the_next_is_launched_and_crops_cross_as_uint8(
    tmp_path: Path, folder: Path, scorer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = ScoringTrace()
    forward = DifficultyScorer.__call__

    def launch(self: DifficultyScorer, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trace.events.append("launch")
        return forward(self, *args)

    monkeypatch.setattr(DifficultyScorer, "__call__", launch)
    with trace:
        scores = read_scores(score_source(config_for(tmp_path, folder, scorer)))  # batches of 5 and 3 per chunk of 8
    assert len(scores) == NUM_IMAGES
    scoring = trace.events[trace.events.index("launch") :]  # before it: reading the scorer and the cache key
    assert scoring.count("launch") == 9  # chunks of 5 + 3, 5 + 3, 5 + 2 (and a corrupt image), 5 + 3, 5
    # No wait between the first two launches: batch 1's results come back while batch 2 runs.
    assert scoring[:2] == ["launch", "launch"], scoring[:10]
    assert scoring[-1] == "read"
    # uint8 crops go to the device as they are and become floats there, never on the host first.
    assert trace.image_ops[:2] == [("to", torch.uint8), ("float", torch.uint8)], trace.image_ops[:4]


def streamed_repo(tmp_path: Path, folder: Path, shards: int) -> Path:
    """The test folder as a Hub-style parquet dataset cut into ``shards`` files."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    table = {
        "image": [{"bytes": p.read_bytes(), "path": p.relative_to(folder).as_posix()} for p in files],
        "label": [sorted(CLASS_SIZES).index(p.parent.name) for p in files],
    }
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=sorted(CLASS_SIZES))})
    dataset = datasets.Dataset.from_dict(table, features=features)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for k in range(shards):
        dataset.shard(shards, k, contiguous=True).to_parquet(str(repo / "data" / f"train-{k:05d}-of-{shards:05d}.parquet"))
    return repo


def test_a_streamed_source_is_split_between_nodes_by_shards(tmp_path: Path, folder: Path) -> None:
    repo = streamed_repo(tmp_path, folder, shards=3)
    streamed = open_source(f"hf:{repo}", streaming=True)
    everything = [(r.index, r.source_id, r.label, r.data) for r in open_source(f"hf:{repo}").iter_records()]
    shares = [streamed.node_share(rank, 2) for rank in range(2)]
    # Three shards of 13, 12 and 12 rows: node 0 reads shards 0 and 2, node 1 shard 1, and each only those rows.
    assert [sorted(mine) for _, mine in shares] == [[*range(13), *range(25, 37)], list(range(13, 25))]
    read = [sum(1 for _ in share._dataset) for share, _ in shares]
    assert read == [25, 12]
    records = [(r.index, r.source_id, r.label, r.data) for share, _ in shares for r in share.iter_records()]
    assert sorted(records) == everything
    assert open_source(f"hf:{repo}").node_share(0, 2) is None  # random access: shared out by index instead
    assert streamed.node_share(0, 4) is None  # fewer shards than nodes


COUNTING_SCORE = """
import atexit, json, os, sys
from pathlib import Path
import datasets
rows, iterate = [], datasets.IterableDataset.__iter__
def counted(self):  # every image row this process pulls from a stream
    for row in iterate(self):
        if "image" in row:
            rows.append(row)
        yield row
datasets.IterableDataset.__iter__ = counted
counts = Path(sys.argv[1], os.environ["RANK"])
atexit.register(lambda: counts.write_text(json.dumps(len(rows))))
from d2c_pack.cli import main
sys.argv = ["d2c-pack", "score", *sys.argv[2:]]
main()
"""


def test_torchrun_ranks_read_only_their_shards_of_a_stream_and_score_like_one_process(tmp_path: Path, folder: Path, scorer: Path) -> None:
    repo = streamed_repo(tmp_path, folder, shards=2)  # 19 + 18 rows; chunk 2 (rows 16…23) straddles the two
    single = score_source(config_for(tmp_path / "single", f"hf:{repo}", scorer, streaming=True))
    script, counts = tmp_path / "counting_score.py", tmp_path / "rows-read"
    script.write_text(COUNTING_SCORE)
    counts.mkdir()
    torchrun = str(Path(sys.executable).parent / "torchrun")
    args = ["--source", f"hf:{repo}", "--streaming", "--scorer", str(scorer), "--resolution", "16", "--timesteps", "4", "--batch-size", "5",
            "--chunk-size", "8", "--workers", "0", "--device", "cpu", "--work", str(tmp_path / "pair")]  # fmt: skip
    command = [torchrun, "--standalone", "--nproc-per-node", "2", str(script), str(counts), *args]
    result = subprocess.run(command, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Each rank read its own shard and nothing else (sharing by chunk, as before, the ranks read 37 and 33 rows).
    assert [int((counts / rank).read_text()) for rank in ("0", "1")] == [19, 18]
    (pair_file,) = (tmp_path / "pair").glob("scores/*/scores.parquet")
    assert pair_file.parent.name == single.parent.name
    assert pq.read_table(pair_file).equals(pq.read_table(single))
