"""The paper's Tables 1 and 5 in miniature, on the embedded digits (recipe ``benchmarks/paper-mini.yaml``).

Table 1 (selection): the same small SiT, trained with D2C (DC-Embedding + alignment) for the same
number of steps, on 10% subsets chosen by random, kcenter, herding, min, max and D2C's interval
sampling, plus the same training on all the digits. Table 5 (attach): on the interval subset,
training without the attached columns, with the text only, the visual tokens only, and both.
Every configuration is trained with each seed; every checkpoint is evaluated by FID (demo
encoder CLS features of the samples against all 1,797 digits) and by the accuracy with which the
demo encoder's classifier recognises the samples as their conditioning class. The samples are
class-balanced (30 of each digit), not uniformly random as for FID-50K: with 300 samples, random
class counts would add their own spread to the comparison.

    python benchmarks/paper_mini.py [--recipe benchmarks/paper-mini.yaml] [--out runs/paper-mini] [--tiny]

``--tiny`` (the CI test) applies the recipe's ``tiny:`` overrides: one seed, a few steps and samples, the first
digits of each class (``digits_per_class``, written as an image folder) rather than all 1,797, also the FID
reference, and one torch thread.

The recipe is this benchmark's, not a command's: it lives here rather than among the shipped
recipes, which each drive the ``d2c-pack`` command they name.

Writes OUT/paper_mini.{md,json} and OUT/fid_vs_steps.png and prints the tables. Re-running
continues: built subsets, finished runs and their evaluations are kept (``--report-dir`` copies
the three reports elsewhere, e.g. benchmarks/results/).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from d2c_pack.core.recipe import read_recipe
from d2c_pack.diffusion.sampling import Sampling
from d2c_pack.evaluation.evaluator import evaluate, load_features, load_reference
from d2c_pack.pipeline.build import build
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.sources.image_source import open_source
from d2c_pack.training.loop import train
from d2c_pack.training.settings import TrainConfig

RECIPE = Path(__file__).with_name("paper-mini.yaml")

REFERENCE, FEATURES = "demo:digits", "demo:digits-encoder"
# Attach ablation: which attached columns the training uses, as (text, align).
ATTACH = {"none": (False, False), "text": (True, False), "visual": (False, True), "both": (True, True)}


@dataclasses.dataclass(kw_only=True)
class MiniSettings:
    """The keys of the ``paper-mini`` recipe (besides its ``build:``, ``train:`` and ``tiny:`` mappings)."""

    budget: str = "10%"
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    selectors: list[str] = dataclasses.field(default_factory=lambda: ["random", "kcenter", "herding", "min", "max", "interval"])
    attach: list[str] = dataclasses.field(default_factory=lambda: list(ATTACH))
    full_data: bool = True
    steps: int = 300
    eval_every: int = 100
    num_samples: int = 300
    sampling_steps: int = 20
    cfg_scale: float = 1.5
    processes: int = 2  # runs in parallel, one thread each: small models use one core better than two
    digits_per_class: int | None = None  # build from, and compare with, the first N digits of each class (an image folder under OUT); None: all 1,797
    build: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a configuration of a table, one seed."""

    table: str  # "selection", "attach" or "reference"
    name: str
    data: str
    text: bool
    align: bool
    seed: int

    @property
    def key(self) -> str:
        return f"{self.table}-{self.name}-seed{self.seed}".replace(" ", "_")


def read_settings(recipe: str, tiny: bool) -> MiniSettings:
    keys = read_recipe(recipe)
    keys["train"] = read_recipe(recipe, "train")
    overrides = keys.pop("tiny", {}) if isinstance(keys.get("tiny"), dict) else {}
    if tiny:
        keys |= {k: v for k, v in overrides.items() if k not in ("build", "train")}
        keys["build"] = keys.get("build", {}) | overrides.get("build", {})
        keys["train"] = keys["train"] | overrides.get("train", {})
    known = {f.name for f in dataclasses.fields(MiniSettings)}
    if unknown := sorted(set(keys) - known):
        raise SystemExit(f"unknown key(s) in recipe {recipe}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return MiniSettings(**keys)


def build_subsets(settings: MiniSettings, out: Path) -> dict[tuple[str, int], str]:
    """Builds every subset once; only random selection depends on the seed. Returns {(selector, seed): folder}."""
    base = read_recipe("demo") | settings.build | {"work": str(out / "work"), "budget": settings.budget}
    if settings.digits_per_class:
        base["source"] = digits_folder(settings.digits_per_class, out / "source")
    folders = {}
    wanted = [(s, seed) for s in settings.selectors for seed in settings.seeds]
    if settings.full_data:
        wanted += [("full", seed) for seed in settings.seeds]
    for selector, seed in wanted:
        selection_seed = seed if selector == "random" else settings.seeds[0]
        name = f"{selector}-seed{selection_seed}" if selector == "random" else selector
        folder = out / "data" / name
        if folder not in folders.values():
            options = {"selector": selector} if selector != "full" else {"selector": "interval", "budget": "100%"}
            build(BuildConfig(**base | options | {"seed": selection_seed, "out": str(folder)}))
        folders[selector, seed] = str(folder)
    return folders


def reference(settings: MiniSettings, out: Path) -> str:
    """What the samples' FID compares them with: all the digits, or the smaller source the subsets were built from."""
    return digits_folder(settings.digits_per_class, out / "source") if settings.digits_per_class else REFERENCE


def digits_folder(per_class: int, folder: Path) -> str:
    """The first ``per_class`` digits of each class, as an image folder (a sub-folder per class, the demo's PNG bytes)."""
    if not folder.exists():
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        taken: collections.Counter[str] = collections.Counter()
        digits = open_source("demo:digits")
        for record in digits.iter_records():
            name = digits.class_names[record.label]
            if taken[name] < per_class:
                (partial / name).mkdir(parents=True, exist_ok=True)
                (partial / name / f"{record.index:04d}.png").write_bytes(record.data)
                taken[name] += 1
        partial.rename(folder)
    return str(folder)


def plan_jobs(settings: MiniSettings, subsets: dict[tuple[str, int], str]) -> list[Job]:
    jobs = []
    for seed in settings.seeds:
        jobs += [Job("selection", s, subsets[s, seed], True, True, seed) for s in settings.selectors]
        if "interval" in settings.selectors:  # "both" is the interval row of the selection table
            jobs += [Job("attach", a, subsets["interval", seed], *ATTACH[a], seed) for a in settings.attach if a != "both"]
        if settings.full_data:
            jobs.append(Job("reference", "full data", subsets["full", seed], True, True, seed))
    return jobs


def run_job(job: Job, settings: MiniSettings, out: Path) -> dict:
    """Trains one run (resumable) and evaluates each of its checkpoints; the result is cached in OUT/results/."""
    result_path = out / "results" / f"{job.key}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    run = out / "runs" / job.key
    tic = time.perf_counter()
    config = settings.train | {
        "data": job.data, "out": str(run), "text": job.text, "align": job.align, "seed": job.seed,
        "steps": settings.steps, "ckpt_every": settings.eval_every, "workers": 0, "device": "cpu",
    }  # fmt: skip
    train(TrainConfig(**config))
    train_seconds = time.perf_counter() - tic
    curve = []
    for checkpoint in sorted((run / "checkpoints").glob("[0-9]" * 7)):
        metrics = evaluate(
            checkpoint, reference=reference(settings, out), features=FEATURES, num_samples=settings.num_samples, device="cpu",
            sampling=Sampling(labels="balanced", steps=settings.sampling_steps, cfg_scale=settings.cfg_scale, seed=0), work_dir=out / "work",
        )  # fmt: skip
        curve.append({"step": int(checkpoint.name), "fid": metrics["fid"], "accuracy": metrics["accuracy"]})
    result = dataclasses.asdict(job) | {"curve": curve, "train_seconds": train_seconds, "total_seconds": time.perf_counter() - tic}
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(run / "checkpoints")  # the weights of 30 runs are not worth keeping; the metrics are
    return result


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_jobs(jobs: list[Job], settings: MiniSettings, out: Path) -> list[dict]:
    threads = max(1, (os.cpu_count() or 1) // settings.processes)
    if settings.processes == 1:
        return [run_job(job, settings, out) for job in jobs]
    pool = ProcessPoolExecutor(settings.processes, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,))
    with pool:
        return list(pool.map(run_job, jobs, [settings] * len(jobs), [out] * len(jobs)))


def summarise(results: list[dict]) -> list[dict]:
    """One row per (table, configuration): mean and std over seeds of the final FID and accuracy, and the mean curve."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for result in results:
        rows.setdefault((result["table"], result["name"]), []).append(result)
    summary = []
    for (table, name), runs in rows.items():
        fids = np.array([[point["fid"] for point in run["curve"]] for run in runs])  # (seeds, checkpoints)
        accuracies = np.array([run["curve"][-1]["accuracy"] for run in runs])
        summary.append({
            "table": table, "name": name, "seeds": len(runs), "steps": [p["step"] for p in runs[0]["curve"]],
            "fid_mean": float(fids[:, -1].mean()), "fid_std": float(fids[:, -1].std()),
            "accuracy_mean": float(accuracies.mean()), "accuracy_std": float(accuracies.std()),
            "fid_curve_mean": fids.mean(0).tolist(), "fid_curve_std": fids.std(0).tolist(),
        })  # fmt: skip
    return summary


def markdown(summary: list[dict], settings: MiniSettings) -> str:
    def table(rows: list[dict], label: str) -> list[str]:
        lines = [f"| {label} | FID ↓ | accuracy ↑ |", "|---|---:|---:|"]
        best = min(row["fid_mean"] for row in rows)
        for row in rows:
            fid = f"{row['fid_mean']:.2f} ± {row['fid_std']:.2f}"
            lines.append(f"| {row['name']} | {f'**{fid}**' if row['fid_mean'] == best else fid} | {row['accuracy_mean']:.1%} ± {row['accuracy_std']:.1%} |")
        return lines

    by_table = {name: [row for row in summary if row["table"] == name] for name in ("selection", "attach", "reference")}
    both = [dict(row, name="both") for row in by_table["selection"] if row["name"] == "interval"]
    seeds = ", ".join(map(str, settings.seeds))
    compared = f"the first {settings.digits_per_class} digits of each class" if settings.digits_per_class else "all 1,797 digits"
    lines = [
        f"Digits, {settings.budget} budget, {settings.train.get('model')} trained {settings.steps} steps with batch "
        f"{settings.train.get('batch_size')}; mean ± std over seeds {seeds}; {settings.num_samples} samples "
        f"({settings.sampling_steps} Euler steps, CFG {settings.cfg_scale}) per evaluation; FID on demo-encoder features against {compared}.",
        "",
        "**Selection (Table 1 in miniature)** — all trained with DC-Embedding + alignment:",
        "",
        *table(by_table["selection"] + by_table["reference"], "subset"),
        "",
        "**Attach ablation (Table 5 in miniature)** — the interval subset, trained with:",
        "",
        *table(by_table["attach"] + both, "attached columns used"),
    ]
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    panels = {"selection": (axes[0], "Selection (all with D2C training)"), "attach": (axes[1], "Attach ablation (interval subset)")}
    for row in summary:
        targets = [panels["selection"]] if row["table"] != "attach" else [panels["attach"]]
        if row["table"] == "selection" and row["name"] == "interval":
            targets.append(panels["attach"])
        for axis, _ in targets:
            label = "both" if axis is axes[1] and row["table"] == "selection" else row["name"]
            steps, mean, std = np.array(row["steps"]), np.array(row["fid_curve_mean"]), np.array(row["fid_curve_std"])
            axis.plot(steps, mean, marker="o", label=label, linestyle="--" if row["table"] == "reference" else "-")
            axis.fill_between(steps, mean - std, mean + std, alpha=0.15)
    for axis, title in panels.values():
        axis.set_title(title)
        axis.set_xlabel("training steps")
        axis.legend()
    axes[0].set_ylabel("FID (demo encoder) ↓")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE), help="YAML path of the benchmark's recipe.")
    parser.add_argument("--out", default="runs/paper-mini", help="Working folder (subsets, runs, results, reports).")
    parser.add_argument("--tiny", action="store_true", help="Apply the recipe's tiny: overrides (the CI size).")
    parser.add_argument("--report-dir", default=None, help="Also copy paper_mini.{md,json} and fid_vs_steps.png here.")
    args = parser.parse_args(argv)
    settings = read_settings(args.recipe, args.tiny)
    threads = torch.get_num_threads()
    if args.tiny:  # OpenMP threads waiting on each other dominate tiny ops on a small, shared CPU
        torch.set_num_threads(1)
    try:
        run(args, settings)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, settings: MiniSettings) -> None:
    out = Path(args.out)
    tic = time.perf_counter()
    subsets = build_subsets(settings, out)
    # The reference statistics are cached before the workers start, so that they do not race to write them.
    extractor = load_features(FEATURES, settings.train.get("resolution", 32))
    load_reference(reference(settings, out), extractor, settings.train.get("resolution", 32), work_dir=out / "work")
    results = run_jobs(plan_jobs(settings, subsets), settings, out)
    summary = summarise(results)
    report = markdown(summary, settings)
    payload = {
        "settings": dataclasses.asdict(settings), "summary": summary, "runs": results, "seconds": time.perf_counter() - tic,
        "machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    (out / "paper_mini.md").write_text(report)
    (out / "paper_mini.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(summary, out / "fid_vs_steps.png")
    if args.report_dir:
        Path(args.report_dir).mkdir(parents=True, exist_ok=True)
        for name in ("paper_mini.md", "paper_mini.json", "fid_vs_steps.png"):
            shutil.copy(out / name, Path(args.report_dir) / name)
    print(report)
    print(f"{len(results)} runs in {payload['seconds'] / 60:.1f} min; reports in {out}")


if __name__ == "__main__":
    main()
