"""The ``d2c-pack`` command line: a thin Typer layer over the library.

Each command parses its flags (merged with ``--recipe`` where it has one) and calls one
library function. The options of ``score``, ``build`` and ``train`` are the fields of their
config dataclasses (``ScoreConfig``, ``BuildConfig``, ``TrainConfig``), declared once with
their help text. A :class:`~d2c_pack.errors.UserError` is printed as one line and exits with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from d2c_pack import __version__
from d2c_pack.build import BuildConfig, build, describe_build
from d2c_pack.card import update_card
from d2c_pack.demo.flow import DemoConfig, run_demo
from d2c_pack.errors import UserError
from d2c_pack.explore import PAGE_SIZE_NOTE, explore
from d2c_pack.hub import PushConfig, push
from d2c_pack.hub_retry import hub_failure, hub_problem
from d2c_pack.layout import MANIFEST_FILE
from d2c_pack.recipe import merge_recipe, read_recipe
from d2c_pack.score import ScoreConfig, read_scores, score_source, summarize
from d2c_pack.train.encoder import EncoderTrainConfig, train_encoder
from d2c_pack.train.evaluation import evaluate, evaluate_npz, subset_defaults
from d2c_pack.train.loop import TrainConfig, train
from d2c_pack.train.sample import LABEL_MODES, sample_grid, sample_npz
from d2c_pack.train.transport import SAMPLERS, GuidanceInterval
from d2c_pack.verify import describe, locate, print_tables, verify

app = typer.Typer(
    name="d2c-pack",
    help="Diffusion Dataset Condensation: build, publish and train on small condensed image datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stderr = Console(stderr=True)
_show_tracebacks = False

RecipeOption = Annotated[
    str | None,
    typer.Option(help="YAML recipe (path, or name of a shipped recipe) carrying any of this command's flags; flags given here override it."),
]


def _version(value: bool) -> None:
    if value:
        print(f"d2c-pack {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    global _show_tracebacks
    _show_tracebacks = debug


def config_command(name: str, config_class: type, run: Callable[[Any], str], help: str, recipe_ignores: frozenset[str] = frozenset()) -> None:
    """Registers command ``name`` whose options are the fields of ``config_class`` (plus ``--recipe``).

    Each field's ``help`` metadata is its option's help. The command merges the recipe under
    the flags (skipping the keys in ``recipe_ignores``), builds the config and prints what
    ``run(config)`` returns.
    """
    fields = dataclasses.fields(config_class)
    hints = typing.get_type_hints(config_class)

    def command(ctx: typer.Context, **_: Any) -> None:
        params = dict(ctx.params)
        if recipe := params.pop("recipe", None):
            params = merge_recipe(ctx, read_recipe(recipe, name), recipe_ignores)
            params.pop("recipe")
        for field in fields:
            if _is_required(field) and params[field.name] in (None, ""):
                raise UserError(f"--{field.name.replace('_', '-')} is required (on the command line or in the recipe)")
        if message := run(config_class(**params)):
            print(message)

    def option(field: dataclasses.Field) -> inspect.Parameter:
        required = _is_required(field)
        # A required field is optional on the command line: the recipe may supply it.
        hint = hints[field.name] | None if required else hints[field.name]
        default = None if required else field.default_factory() if field.default is dataclasses.MISSING else field.default
        annotation = Annotated[hint, typer.Option(help=field.metadata["help"], show_default=not required)]
        return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    recipe = inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=RecipeOption)
    command.__signature__ = inspect.Signature([context, *map(option, fields), recipe])
    app.command(name, help=help)(command)


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _score(config: ScoreConfig) -> str:
    tic = time.perf_counter()
    scores_file = score_source(config)
    return f"{summarize(read_scores(scores_file), time.perf_counter() - tic)}\nscores: {scores_file}"


def _build(config: BuildConfig) -> str:
    out = build(config)
    return "" if out is None else describe_build(out)  # None: a rank other than 0 under torchrun


def _train(config: TrainConfig) -> str:
    return f"trained model: {train(config)}"


def _demo(config: DemoConfig) -> str:
    report = run_demo(config)
    table = Table("stage", "output", "seconds", title="d2c-pack demo")
    for what, output, seconds in report.rows:
        table.add_row(what, output, f"{seconds:.0f}")
    Console().print(table)
    return ""


def _train_encoder(config: EncoderTrainConfig) -> str:
    return f"trained encoder: {train_encoder(config)}"


config_command(
    "score",
    ScoreConfig,
    _score,
    "Score every image of a source with a diffusion backbone (cached, resumable; runs under torchrun). Takes build recipes.",
    recipe_ignores=frozenset(f.name for f in dataclasses.fields(BuildConfig)) - frozenset(f.name for f in dataclasses.fields(ScoreConfig)),
)
config_command("build", BuildConfig, _build, "Build a condensed dataset: score (cached), select, package in the Hub layout.")
config_command("train", TrainConfig, _train, "Train a SiT backbone with the velocity objective (resumable; writes OUT/model at the end).")
config_command("demo", DemoConfig, _demo, "Run the whole flow on the embedded digits: build, publish, load, train with D2C, sample, FID.")
config_command("train-encoder", EncoderTrainConfig, _train_encoder, "Train a small DINOv2-architecture classifier on a source (the demo's visual encoder).")


CheckpointOption = Annotated[
    str | None, typer.Option("--ckpt", help="Model: a training run folder, a d2c-pack model folder, an official SiT .pt file, or demo:digits.")
]
SamplerOption = Annotated[
    str,
    typer.Option(help=f"Sampler: {', '.join(SAMPLERS)} (Euler / Heun ODE as REPA's, SiT's Euler–Maruyama SDE, SiT's adaptive dopri5 ODE)."),
]
StepsOption = Annotated[
    int,
    typer.Option(
        help="Sampling steps N. euler, heun: N intervals of an N + 1 point grid (REPA's count; heun makes 2N − 1 network calls). "
        "euler-maruyama: N grid points, i.e. N network calls: N − 1 SDE steps up to t = 0.96, then one mean step (SiT's and REPA's count). "
        "dopri5: ignored, the solver picks its steps (SiT's atol 1e-6, rtol 1e-3)."
    ),
]
IntervalOption = Annotated[
    str | None, typer.Option(help="SiT times 'low,high' (0 = noise, 1 = data) where guidance applies (default: 0,1).", show_default=False)
]
GuidanceLowOption = Annotated[
    float | None,
    typer.Option(
        help="REPA's convention instead of --guidance-interval: guide where low ≤ t_REPA ≤ high, t_REPA = 1 − t_SiT (1 = noise; default: 0).",
        show_default=False,
    ),
]
GuidanceHighOption = Annotated[
    float | None,
    typer.Option(
        help="REPA's convention: the upper end in t_REPA = 1 − t_SiT, e.g. 0.7 = --guidance-interval 0.3,1, compared on REPA's own float64 grid (default: 1).",
        show_default=False,
    ),
]
LabelsOption = Annotated[
    str,
    typer.Option(help=f"Classes of the samples: {' or '.join(LABEL_MODES)} (uniform random as DiT/SiT/REPA's FID-50K; balanced: sample i is of class i mod C)."),
]
VaeOption = Annotated[str | None, typer.Option(help="A local copy of the VAE the model was trained with (checked against the weights hash it recorded); default: the VAE it names.")]


@app.command()
def sample(
    checkpoint: Annotated[str | None, typer.Argument(help="Model, as --ckpt (give one of the two).", show_default=False)] = None,
    ckpt: CheckpointOption = None,
    out: Annotated[str, typer.Option(help="A .png grid (one row per class), or an .npz of --num-samples samples for the ADM evaluator.")] = "samples.png",
    per_class: Annotated[int, typer.Option(help="Grid: samples per class.")] = 8,
    classes: Annotated[str | None, typer.Option(help="Grid: comma-separated class indices (default: all classes).")] = None,
    num_samples: Annotated[int, typer.Option(help=".npz: number of samples.")] = 50_000,
    labels: LabelsOption = "random",
    sampler: SamplerOption = "euler",
    steps: StepsOption = 50,
    cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = no guidance).")] = 1.0,
    guidance_interval: IntervalOption = None,
    guidance_low: GuidanceLowOption = None,
    guidance_high: GuidanceHighOption = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    device: Annotated[str, typer.Option(help="'cpu', 'cuda', …")] = "cpu",
    vae: VaeOption = None,
) -> None:
    """Sample a trained model: a PNG grid per class, or an ADM-evaluator .npz (Euler / Heun / dopri5 ODE, Euler–Maruyama SDE, CFG)."""
    model = _one_checkpoint(checkpoint, ckpt)
    interval = _guidance_interval(guidance_interval, guidance_low, guidance_high)
    settings = dict(sampler=sampler, num_steps=steps, cfg_scale=cfg_scale, guidance_interval=interval, seed=seed, device=device, vae=vae)
    if out.endswith(".npz"):
        path = sample_npz(model, out, num_samples=num_samples, labels=labels, **settings)
    else:
        class_list = _parse_int_list(classes, "--classes") if classes else None
        path = sample_grid(model, out, per_class=per_class, classes=class_list, **settings)
    print(f"wrote {path}")


@app.command("eval")
def eval_command(
    ckpt: CheckpointOption = None,
    samples: Annotated[str | None, typer.Option(help="Score an existing ADM sample .npz (arr_0 uint8 N×H×W×3, arr_1 labels) instead of sampling a model.")] = None,
    data: Annotated[str | None, typer.Option(help="The condensed dataset the model was trained on: sets the default reference and features.")] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="An ADM reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz), or reference images (any source: demo:digits, hf:NAME, a folder; default: the subset's source)."),
    ] = None,
    features: Annotated[str | None, typer.Option(help="'inception' (the ADM evaluator's network: FID, sFID, IS, precision, recall), or a visual encoder (e.g. demo:digits-encoder) whose CLS features FID and precision/recall use (default: see --data).")] = None,
    inception_weights: Annotated[str | None, typer.Option(help="Local file of torch-fidelity's Inception weights (default: the library's download).")] = None,
    num_samples: Annotated[int, typer.Option(help="Samples generated (the paper protocol: 50000).")] = 1000,
    labels: LabelsOption = "random",
    sampler: SamplerOption = "euler",
    steps: StepsOption = 50,
    cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 1.0,
    guidance_interval: IntervalOption = None,
    guidance_low: GuidanceLowOption = None,
    guidance_high: GuidanceHighOption = None,
    seed: Annotated[int, typer.Option(help="Noise (and random label) seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per batch, for sampling and for the feature network.")] = 256,
    device: Annotated[str, typer.Option(help="'cpu', 'cuda', …")] = "cpu",
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the results to this JSON file.")] = None,
    vae: VaeOption = None,
) -> None:
    """The ADM suite (FID, sFID, IS, precision, recall; accuracy with a classifier encoder) of a model's samples or of an ADM .npz."""
    if (ckpt is None) == (samples is None):
        raise UserError("give the samples to score: --ckpt MODEL to sample a model, or --samples FILE.npz")
    default_reference, default_features = subset_defaults(data) if data else (None, "inception")
    if (reference or default_reference) is None:
        raise UserError("give --reference (an ADM reference batch or images to compare with) or --data (the subset the model was trained on)")
    common = dict(
        reference=reference or default_reference, features=features or default_features, device=device, batch_size=batch_size,
        inception_weights=inception_weights,
    )  # fmt: skip
    if samples is not None:
        results = evaluate_npz(samples, **common)
    else:
        results = evaluate(
            ckpt, num_samples=num_samples, labels=labels, sampler=sampler, num_steps=steps, cfg_scale=cfg_scale,
            guidance_interval=_guidance_interval(guidance_interval, guidance_low, guidance_high), seed=seed, vae=vae, **common,
        )  # fmt: skip
    print(f"{results['samples']}: {results['num_samples']} samples against {results['reference']}, {results['features']} features")
    table = Table("metric", "value")
    for key in ("fid", "sfid", "inception_score", "precision", "recall", "accuracy"):
        if results.get(key) is not None:
            table.add_row(key, f"{results[key]:.4f}")
    Console().print(table)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2, default=str) + "\n")


def _one_checkpoint(argument: str | None, option: str | None) -> str:
    if (argument is None) == (option is None):
        raise UserError("give the model either as an argument or as --ckpt")
    return argument or option


def _guidance_interval(text: str | None, repa_low: float | None, repa_high: float | None) -> GuidanceInterval:
    """--guidance-interval in SiT time, or REPA's --guidance-low/--guidance-high (its defaults 0 and 1): one convention, not both."""
    if repa_low is not None or repa_high is not None:
        if text is not None:
            raise UserError("give the guidance interval either as --guidance-interval (SiT time) or as --guidance-low/--guidance-high (REPA time), not both")
        return GuidanceInterval(0.0 if repa_low is None else repa_low, 1.0 if repa_high is None else repa_high, time="repa")
    try:
        low, high = (float(part) for part in (text or "0,1").split(","))
    except ValueError:
        raise UserError(f"--guidance-interval takes 'low,high', got {text!r}") from None
    return GuidanceInterval(low, high)


@app.command("push")
def push_command(
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repository ORG/NAME.")],
    source_dir: Annotated[str, typer.Option("--from", help="The built dataset folder to publish.")] = ".",
    tag: Annotated[str | None, typer.Option(help="Version tag for the pushed commit, e.g. v1.0.")] = None,
    private: Annotated[bool | None, typer.Option("--private/--public", help="Visibility (default: private for ImageNet-derived data, else public).", show_default=False)] = None,
    gated: Annotated[bool | None, typer.Option("--gated/--not-gated", help="Gate access behind the card's terms (default: gated for ImageNet-derived data).", show_default=False)] = None,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request (all files in one commit) instead of committing to the branch (in commits of at most 5 GiB).")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to commit to (default: main).")] = None,
    message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    force: Annotated[bool, typer.Option(help="Move the tag if it already exists.")] = False,
) -> None:
    """Publish a built dataset folder as a versioned Hub dataset (token: HF_TOKEN or `hf auth login`)."""
    config = PushConfig(
        repo_id=repo_id, source_dir=source_dir, tag=tag, private=private, gated=gated, create_pr=create_pr,
        revision=revision, message=message, force=force,
    )  # fmt: skip
    result = push(config)
    print(f"pushed {source_dir} to {repo_id} at {result.commit[:12]}" + (f", tagged {tag}" if tag else ""))
    print(f"from datasets import load_dataset; subset = {result.load_line()}")


@app.command("verify")
def verify_command(name: Annotated[str, typer.Argument(help="A dataset folder, or a Hub dataset ORG/NAME[@REVISION].")]) -> None:
    """Check a condensed dataset: every file against the manifest's sha256 and size, every parquet schema against the card."""
    location = locate(name)
    problems = verify(location)
    for problem in problems:
        typer.echo(f"✗ {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    print(f"{location.name}: all {len(location.files())} files match the manifest and the card")


@app.command("inspect")
def inspect_command(name: Annotated[str, typer.Argument(help="A dataset folder, or a Hub dataset ORG/NAME[@REVISION].")]) -> None:
    """Summary tables of a condensed dataset: rows, classes, selection, columns and shapes, size."""
    print_tables(describe(locate(name)))


@app.command("explore", help=(
    "Write one self-contained HTML page (no server, nothing fetched) of a condensed dataset: per class, every source image's "
    "difficulty along the ranking with the selected ones marked, thumbnails of selected and rejected images, class search, "
    f"and the budget, selector, stride and scorer used. Reads the 'scores' config: no model runs. {PAGE_SIZE_NOTE}"
))
def explore_command(
    name: Annotated[str, typer.Argument(help="A dataset folder, or a Hub dataset ORG/NAME[@REVISION].")],
    out: Annotated[Path, typer.Option(help="The page to write.")] = Path("explore.html"),
    source: Annotated[str | None, typer.Option(help="The source the subset was built from (as build's --source), for thumbnails of rejected images; without it they are shown by score only.", show_default=False)] = None,
) -> None:
    print(f"wrote {explore(name, out, source)}")


def _parse_int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, got {text!r}") from None


def main() -> None:
    """Console entry point: runs the app and turns user errors, and Hub failures that retries did not
    cure, into one line and exit code 2."""
    try:
        app()
    except Exception as err:
        failure = None if isinstance(err, UserError) else hub_failure(err)
        if _show_tracebacks or not (isinstance(err, UserError) or failure):
            raise
        message = err if failure is None else f"a request to the Hub failed: {hub_problem(failure)}"
        stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(2)


@app.command("card")
def card_command(
    folder: Annotated[Path, typer.Argument(help="A dataset folder built by `d2c-pack build`.")],
    license: Annotated[str | None, typer.Option(help="New licence: a Hub licence id (cc-by-4.0, mit, other, …) or 'imagenet'; '' = automatic.", show_default=False)] = None,
    description: Annotated[str | None, typer.Option(help="New Markdown description under the card's title; '' = none.", show_default=False)] = None,
    pretty_name: Annotated[str | None, typer.Option(help="New title of the card; '' = automatic.", show_default=False)] = None,
) -> None:
    """Render the dataset card (README.md) again from the manifest, with a new licence, description or title, and re-seal the manifest.

    The settings are recorded in d2c/recipe.yaml and the manifest: `verify` passes, `push` accepts the folder, and a rebuild from the recipe gives the same card. A hand edit of README.md fails `verify`.

    Example: d2c-pack card out/digits-d2c --license cc-by-4.0 --description "Digits condensed to 10% for a quick test."
    """
    path = update_card(folder, license=license, description=description, pretty_name=pretty_name)
    print(f"wrote {path}; {folder / MANIFEST_FILE} re-sealed")

