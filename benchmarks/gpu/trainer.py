"""Training speed through the trainer itself: ``d2c_pack.training.loop.train()`` on a synthetic ImageNet-shaped build.

What ``d2c-pack train --data BUILD`` runs, nothing bypassed: the build's parquet shards read by
the trainer's DataLoader (workers, pinned memory), each step's randomness, bf16 autocast, AdamW,
gradient clipping, the EMA, the metrics log and, on a machine with several GPUs, DDP over all of
them (the same ``train()`` launched by ``torchrun``, one process per GPU). The build has the
shapes of an ImageNet build at 256 px (``train_in_place.synthetic_build``): SD-VAE latent moments
8×32×32, DINOv2-B patch tokens 256×768 and flan-T5-XL caption embeddings 16×2048, random values;
it is written to memory (``/dev/shm`` where there is one), so the disk is not what is timed.

Images/s comes from the run's ``metrics.jsonl`` (``log_every`` = 1: a line per step, each with
that step's images per second): the images of the steps after the warm-up over their seconds.

    torchrun --standalone --nproc-per-node 8 benchmarks/gpu/trainer.py CONFIG.json   # what run.py starts on 8 GPUs
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run by torchrun as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from benchmarks.gpu.measure import Row, rate_row
from benchmarks.gpu.specs import Spec
from benchmarks.train_in_place import synthetic_build
from d2c_pack.training.loop import train
from d2c_pack.training.settings import TrainConfig

WARMUP_STEPS = 5  # the first steps start the loader workers, allocate the optimizer state and pick kernels
TIMED_STEPS = 20


def measure_trainer(
    spec: Spec, device: torch.device, peak: float, *, batch_per_gpu: int, flops_per_item: float, workers: int, out: Path
) -> tuple[Row, Path]:
    """The row of ``train()`` on every GPU of the machine (one process on a CPU) writing its run to ``out``, and the folder of its model.

    ``flops_per_item`` is the model FLOPs of one training image (forward and backward), counted on the trainer's step.
    """
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    processes = max(1, gpus)
    batch = batch_per_gpu * processes
    steps = WARMUP_STEPS + TIMED_STEPS
    memory = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="d2c-gpu-build-", dir=memory) as folder:
        build = synthetic_build(Path(folder), rows=max(2 * batch, 64), resolution=spec.resolution, text_shape=(16, spec.text_dim), visual_dim=spec.visual_dim)
        config = TrainConfig(
            data=str(build), out=str(out), model=spec.trainee, batch_size=batch, steps=steps, log_every=1, ckpt_every=steps,
            workers=workers, device=str(device) if processes == 1 else "auto",
        )  # fmt: skip
        if processes == 1:
            train(config)
        else:
            _torchrun(config, processes)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [line for line in lines if line["step"] > WARMUP_STEPS]
    seconds = sum(batch / line["images_per_second"] for line in timed)
    row = rate_row(
        "training", f"{spec.trainee} train(), precomputed build", batch=batch, items=batch * len(timed), seconds=seconds,
        flops_per_item=flops_per_item, peak=peak, steps_timed=len(timed), warmup_steps=WARMUP_STEPS, workers=workers, processes=processes,
        ddp=processes > 1, build_in_memory=memory is not None,
    )  # fmt: skip
    row.mfu = row.mfu / processes  # MFU is per device: the peak is one GPU's
    return row, out / "model"


def _torchrun(config: TrainConfig, processes: int) -> None:
    """``train(config)`` in ``processes`` processes under ``torchrun`` (DDP, one GPU each), through this file's ``__main__``."""
    settings = Path(config.out).with_name("train_config.json")
    settings.write_text(json.dumps(dataclasses.asdict(config)))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--standalone", "--nproc-per-node", str(processes), str(Path(__file__).resolve()), str(settings)]
    root = str(Path(__file__).resolve().parents[2])
    subprocess.run(command, check=True, env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))})


if __name__ == "__main__":
    train(TrainConfig(**json.loads(Path(sys.argv[1]).read_text())))
