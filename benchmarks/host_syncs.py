"""Host syncs of the trainer: the project's calls that would make the host wait for a GPU, over N training steps.

Builds the tests' tiny pixel subset (12 images at R = 16, text and visual columns) under --work, trains
SiT-T/4 on it on the CPU for `--steps` steps logging every `--log-every`, with a time-based checkpoint
check, and counts the calls with tests/host_sync.py's counter (``item``, ``tolist``, ``bool``/``float``/
``int``, ``cpu``, ``numpy``, blocking host↔device ``to``, from frames under ``d2c_pack/``). Run it with
PYTHONPATH pointing at another checkout to count that checkout's trainer.

    python benchmarks/host_syncs.py [--steps 40] [--log-every 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_image_folder, make_official_scorer, make_tiny_dinov2  # noqa: E402
from host_sync import HostSyncs  # noqa: E402

from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig  # noqa: E402
from d2c_pack.training.loop import train
from d2c_pack.training.settings import TrainConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--work", default=None, help="folder for the subset and the run (removed afterwards)")
    parser.add_argument("--out", default="benchmarks/results/host_syncs.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.work))
    try:
        images, scorer = make_image_folder(root / "images"), make_official_scorer(root / "scorer")
        data = build(BuildConfig(
            source=str(images), scorer=str(scorer), resolution=16, timesteps=2, workers=0, device="cpu", work=str(root / "work"), budget="4/class",
            text_encoder="demo:minilm", visual_encoder=str(make_tiny_dinov2(root / "dinov2")), vae="none", out=str(root / "pixels"),
        ))  # fmt: skip
        config = TrainConfig(
            data=str(data), out=str(root / "run"), model="SiT-T/4", resolution=16, vae="none", learn_sigma=False, steps=args.steps, batch_size=8,
            lr=1e-3, workers=0, log_every=args.log_every, ckpt_every=args.steps, ckpt_every_seconds=3600, device="cpu",
        )  # fmt: skip
        with HostSyncs() as syncs:
            train(config)
    finally:
        shutil.rmtree(root)
    report = {"steps": args.steps, "log_every": args.log_every, "count": syncs.count, "calls": dict(syncs.calls.most_common())}
    print(json.dumps(report, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
