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
import sys
import time
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from d2c_pack import __version__
from d2c_pack.build import BuildConfig, build, describe_build
from d2c_pack.errors import UserError
from d2c_pack.hub import PushConfig, push
from d2c_pack.recipe import merge_recipe, read_recipe
from d2c_pack.score import ScoreConfig, read_scores, score_source, summarize
from d2c_pack.train.encoder import EncoderTrainConfig, train_encoder
from d2c_pack.train.loop import TrainConfig, train
from d2c_pack.train.sample import sample_grid
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
            params = merge_recipe(ctx, read_recipe(recipe), recipe_ignores)
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
config_command("train-encoder", EncoderTrainConfig, _train_encoder, "Train a small DINOv2-architecture classifier on a source (the demo's visual encoder).")


@app.command()
def sample(
    checkpoint: Annotated[str, typer.Argument(help="Backbone: a d2c-pack model/checkpoint folder, an official SiT .pt file, or demo:digits.")],
    out: Annotated[str, typer.Option(help="PNG file for the grid (one row per class).")] = "samples.png",
    per_class: Annotated[int, typer.Option(help="Samples per class.")] = 8,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class indices (default: all classes).")] = None,
    steps: Annotated[int, typer.Option(help="Euler ODE steps.")] = 50,
    cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = no guidance).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    device: Annotated[str, typer.Option(help="'cpu', 'cuda', …")] = "cpu",
) -> None:
    """Sample a class-conditional grid with the Euler ODE sampler."""

    class_list = _parse_int_list(classes, "--classes") if classes else None
    path = sample_grid(checkpoint, out, per_class=per_class, classes=class_list, num_steps=steps, cfg_scale=cfg_scale, seed=seed, device=device)
    print(f"wrote {path}")


@app.command("push")
def push_command(
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repository ORG/NAME.")],
    source_dir: Annotated[str, typer.Option("--from", help="The built dataset folder to publish.")] = ".",
    tag: Annotated[str | None, typer.Option(help="Version tag for the pushed commit, e.g. v1.0.")] = None,
    private: Annotated[bool | None, typer.Option("--private/--public", help="Visibility (default: private for ImageNet-derived data, else public).", show_default=False)] = None,
    gated: Annotated[bool | None, typer.Option("--gated/--not-gated", help="Gate access behind the card's terms (default: gated for ImageNet-derived data).", show_default=False)] = None,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request instead of committing to the branch.")] = False,
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


def _parse_int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, got {text!r}") from None


def main() -> None:
    """Console entry point: runs the app and turns user errors into one line and exit code 2."""
    try:
        app()
    except UserError as err:
        if _show_tracebacks:
            raise
        stderr.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(2)
