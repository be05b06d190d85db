"""The ``d2c-pack`` command line: a thin Typer layer over the library.

Every command is made one way, by :func:`config_command`: its options are the fields of its
settings dataclass in its stage's ``settings`` module (declared once, with their help text and ``--help``
panel), merged with ``--recipe`` where it takes one, and it calls one library function. The
library is imported inside each command, so listing the commands or their options (``--help``)
imports no torch, transformers or datasets. A :class:`~d2c_pack.core.errors.UserError` is printed as
one line and exits with status 2; ``--debug`` shows the traceback instead. Ctrl-C (SIGINT) or
SIGTERM prints one line, what was kept and whether the same command continues from it, and exits
with 130 or 143.

Vocabulary, the same in every command and recipe: ``--steps`` is training steps,
``--sampling-steps`` sampling steps; ``--device auto`` (the default) is this rank's GPU if any,
else the CPU; ``--revision`` is the revision of a source to read, push's ``--branch`` the branch
it commits to; ``--num-samples`` defaults to FID-50K (50,000) except in the CPU demo (500).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import signal
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from d2c_pack.core.errors import UserError
from d2c_pack.core.options import display_name, is_option, is_required
from d2c_pack.core.recipe import read_recipe
from d2c_pack.evaluation.settings import EvalConfig, SampleConfig
from d2c_pack.pipeline.settings import BuildConfig, DemoConfig
from d2c_pack.publish.settings import PAGE_CONTENTS, CardConfig, ExploreConfig, ExportConfig, InspectConfig, PushConfig, VerifyConfig
from d2c_pack.selection.settings import ScoreConfig
from d2c_pack.training.settings import EncoderTrainConfig, TrainConfig
from d2c_pack.version import __version__


class _FlagHelp:
    """``--help`` listed as the flag it is, without a ``<bool>`` value placeholder."""

    def get_help_option(self, ctx: typer.Context) -> Any:  # the help option of typer's own copy of click, or None
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class HelpGroup(_FlagHelp, typer.core.TyperGroup):
    """The command list's help, with ``--help`` as a flag."""


class HelpCommand(_FlagHelp, typer.core.TyperCommand):
    """A command's help as a user reads it: arguments in the usage line without braces, optional ones in
    brackets, and an argument a recipe may supply (so optional to the parser) shown as required all the same."""

    shown_required: frozenset[str] = frozenset()

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required or param.name in self.shown_required else f"[{name}]")
        return pieces


app = typer.Typer(
    name="d2c-pack",
    cls=HelpGroup,
    help="Diffusion Dataset Condensation: build, publish and train on small condensed image datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stderr = Console(stderr=True)
_show_tracebacks = False


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """What a command is made of: the source of its ``--help`` and of the CLI reference (``d2c_pack.cli_reference``)."""

    config_class: type
    help: str
    examples: list[str]
    recipe: bool


COMMANDS: dict[str, CommandSpec] = {}  # name → spec, in registration order

RECIPE_HELP = "YAML recipe (path, or name of a shipped recipe) carrying any of this command's flags; flags given here override it."
RecipeOption = Annotated[str | None, typer.Option(help=RECIPE_HELP)]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is as Ctrl-C raises KeyboardInterrupt: the same unwinding, the same one line."""


class Interrupted(Exception):
    """A command stopped by Ctrl-C or SIGTERM: the line to print, and the exit status (128 + the signal's number)."""

    def __init__(self, message: str, interrupt: KeyboardInterrupt):
        super().__init__(message)
        self.status = 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _version(value: bool) -> None:
    if value:
        print(f"d2c-pack {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", metavar="", help="Show full tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", metavar="", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    global _show_tracebacks
    _show_tracebacks = debug


def config_command(
    name: str,
    config_class: type,
    run: Callable[[Any], str | None],
    help: str,
    examples: list[str],
    *,
    recipe: bool = True,
    recipe_ignores: frozenset[str] = frozenset(),
    kept: Callable[[Any], str] | None = None,
) -> None:
    """Registers command ``name`` whose options are the :func:`~d2c_pack.core.options.flag` fields of ``config_class``.

    Args:
        name: The command's name.
        config_class: Its settings dataclass; each flag field's metadata gives its help, panel,
            spelling and whether it is a positional argument.
        run: Called with the settings; what it returns is printed.
        help: The command's description.
        examples: Command lines shown under "Examples" in its ``--help``.
        recipe: Whether it takes ``--recipe`` (merged under the flags; a required setting may then
            come from the recipe instead of the command line).
        recipe_ignores: Recipe keys skipped rather than refused (another command's settings).
        kept: For a command that continues where it stopped when run again: what an interrupted run has
            kept, from its settings (said in the one line an interruption prints).
    """
    COMMANDS[name] = CommandSpec(config_class, help, examples, recipe)
    fields = [f for f in dataclasses.fields(config_class) if is_option(f)]
    namespace = vars(sys.modules[config_class.__module__])

    def command(ctx: typer.Context, **_: Any) -> None:
        params = dict(ctx.params)
        if recipe_name := params.pop("recipe", None):
            params = merge_recipe(ctx, read_recipe(recipe_name, name), recipe_ignores)
            params.pop("recipe")
        for field in fields:
            if is_required(field) and params[field.name] in (None, ""):
                raise UserError(f"{display_name(field)} is required (on the command line or in the recipe)")
        config = config_class(**params)
        try:
            message = run(config)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (see main)
            what = f"{kept(config)}; the same command continues where it stopped" if kept else "nothing was kept"
            raise Interrupted(f"interrupted: {what}", interrupt) from None
        if message:
            print(message)

    def option(field: dataclasses.Field) -> inspect.Parameter:
        required, meta = is_required(field), field.metadata
        # Annotations are postponed strings: each option's is resolved alone, so that a library-only
        # field may name a type imported for type checkers only.
        hint = eval(field.type, namespace) if isinstance(field.type, str) else field.type
        lenient = required and recipe  # the recipe may supply it: optional on the command line
        if lenient:
            hint = hint | None
        if required and not lenient:
            default: Any = inspect.Parameter.empty
        else:
            default = None if required else field.default_factory() if field.default is dataclasses.MISSING else field.default
        if meta["argument"]:
            shown = meta["help"] + (" [required]" if lenient else "")  # the parser takes it from the recipe too
            info = typer.Argument(help=escape(shown), show_default=False, metavar=field.name.upper())
        else:
            flag_only = {"metavar": ""} if bool in (hint, *typing.get_args(hint)) else {}  # a flag takes no value: no <bool>
            info = typer.Option(*meta["names"], help=escape(meta["help"]), rich_help_panel=meta["panel"], show_default=not required, **flag_only)
        return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, info])

    parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context), *map(option, fields)]
    if recipe:
        parameters.append(inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=RecipeOption))
    command.__signature__ = inspect.Signature(parameters)
    # Help texts are plain text, not rich markup: ORG/NAME[@REVISION] and 'train[:10%]' must show as written.
    epilog = "[bold]Examples[/]\n\n" + "\n\n".join(f"  $ {escape(line)}" for line in examples)
    shown_required = frozenset(f.name for f in fields if f.metadata["argument"] and is_required(f))
    command_class = type(f"{name.title().replace('-', '')}Command", (HelpCommand,), {"shown_required": shown_required})
    app.command(name, cls=command_class, help=escape(help), epilog=epilog)(command)


def merge_recipe(ctx: typer.Context, recipe: dict, ignored: frozenset[str] = frozenset()) -> dict:
    """The command's parameters, with recipe values where no flag was given on the command line.

    Recipe values are converted by the option's own type, so a wrong type is refused the same
    way a wrong flag is. Keys in ``ignored`` (another command's settings, e.g. a build recipe's
    budget given to ``score``) are skipped; any other unknown key is an error.
    """
    params = {p.name: p for p in ctx.command.params if p.name != "recipe"}
    merged = dict(ctx.params)
    for key, value in recipe.items():
        if key in ignored:
            continue
        if key not in params:
            raise UserError(f"unknown recipe key {key!r} for `{ctx.info_name}`; known: {', '.join(sorted(params))}")
        if ctx.get_parameter_source(key).name != "DEFAULT":  # a flag given on the command line wins
            continue
        try:
            merged[key] = None if value is None else params[key].process_value(ctx, value)
        except typer.BadParameter as err:
            raise UserError(f"recipe key {key!r}: {err.message}") from None
    return merged


def _score(config: ScoreConfig) -> str:
    from d2c_pack.selection.score import read_scores, score_source, summarize

    tic = time.perf_counter()
    scores_file = score_source(config)
    return f"{summarize(read_scores(scores_file), time.perf_counter() - tic)}\nscores: {scores_file}"


def _build(config: BuildConfig) -> str:
    from d2c_pack.pipeline.finished import finished_build  # loads no model library: a finished build is found in seconds

    up_to_date = f"{config.out} is up to date: built before from these settings and inputs; nothing to do"
    if finished_build(config) == "same":
        return up_to_date
    from d2c_pack.pipeline.build import build_folder, describe_build

    built = build_folder(config)
    if built.out is None:
        return ""  # a rank other than 0 under torchrun
    return up_to_date if built.up_to_date else describe_build(built.out)


def _train(config: TrainConfig) -> str:
    from d2c_pack.training.loop import train

    return f"trained model: {train(config)}"


def _demo(config: DemoConfig) -> None:
    from d2c_pack.pipeline.demo import run_demo

    report = run_demo(config)
    table = Table("stage", "output", "seconds", title="d2c-pack demo")
    for what, output, seconds in report.rows:
        table.add_row(what, output, f"{seconds:.0f}")
    Console().print(table)


def _train_encoder(config: EncoderTrainConfig) -> str:
    from d2c_pack.training.encoder import train_encoder

    return f"trained encoder: {train_encoder(config)}"


def _sample(config: SampleConfig) -> str:
    from d2c_pack.evaluation.sample import sample_grid, sample_npz

    settings = dict(checkpoint=config.checkpoint, out=config.out, sampling=config.sampling(), device=config.device, vae=config.vae, num_heads=config.num_heads)
    if config.out.endswith(".npz"):
        written = sample_npz(num_samples=config.num_samples, **settings)
    else:
        written = sample_grid(per_class=config.per_class, classes=config.class_list(), **settings)
    return "" if written is None else f"wrote {written}"  # None: a rank other than 0 under torchrun


def _eval(config: EvalConfig) -> None:
    from d2c_pack.evaluation.evaluator import INCEPTION, evaluate, evaluate_npz, subset_defaults

    default_reference, default_features = subset_defaults(config.data) if config.data else (None, INCEPTION)
    if (config.reference or default_reference) is None:
        raise UserError("give --reference (an ADM reference batch or images to compare with) or --data (the subset the model was trained on)")
    common = dict(
        reference=config.reference or default_reference, features=config.features or default_features, device=config.device,
        inception_weights=config.inception_weights, workers=config.workers,
    )  # fmt: skip
    if config.samples is not None:
        results = evaluate_npz(config.samples, batch_size=config.batch_size, **common)
    else:
        results = evaluate(config.checkpoint, num_samples=config.num_samples, sampling=config.sampling(), vae=config.vae, num_heads=config.num_heads, **common)
    if results is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    print(f"{results['samples']}: {results['num_samples']} samples against {results['reference']}, {results['features']} features")
    table = Table("metric", "value")
    for key in ("fid", "sfid", "inception_score", "precision", "recall", "accuracy"):
        if results.get(key) is not None:
            table.add_row(key, f"{results[key]:.4f}")
    Console().print(table)
    if config.json:
        Path(config.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


def _push(config: PushConfig) -> str:
    from d2c_pack.publish.hub import push

    result = push(config)
    pushed = f"pushed {config.source_dir} to {config.repo_id} at {result.commit[:12]}" + (f", tagged {config.tag}" if config.tag else "")
    return f"{pushed}\nfrom datasets import load_dataset; subset = {result.load_line()}"


def _verify(config: VerifyConfig) -> str:
    from d2c_pack.publish.verify import locate, verify

    location = locate(config.name)
    problems = verify(location)
    for problem in problems:
        typer.echo(f"✗ {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    return f"{location.name}: all {len(location.files())} files match the manifest and the card"


def _inspect(config: InspectConfig) -> None:
    from d2c_pack.publish.verify import describe, locate, print_tables

    print_tables(describe(locate(config.name)))


def _card(config: CardConfig) -> str:
    from d2c_pack.publish.card import update_card
    from d2c_pack.publish.layout import MANIFEST_FILE

    path = update_card(Path(config.folder), license=config.license, description=config.description, pretty_name=config.pretty_name)
    return f"wrote {path}; {Path(config.folder) / MANIFEST_FILE} re-sealed"


def _export(config: ExportConfig) -> str:
    from d2c_pack.publish.export import export

    out = export(config)
    return f"exported {config.name} to {out} ({config.format}); {out / 'README.md'} says how to train on it"


def _explore(config: ExploreConfig) -> str:
    from d2c_pack.publish.explore import explore

    return f"wrote {explore(config.name, Path(config.out), config.source)}"


config_command(
    "score",
    ScoreConfig,
    _score,
    "Score every image of a source with a diffusion backbone (cached, resumable; runs under torchrun). Takes build recipes.",
    ["d2c-pack score --recipe demo", "torchrun --nproc_per_node 8 -m d2c_pack score --recipe imagenet-256-d2c-10k"],
    kept=lambda config: f"the images scored so far are cached in {config.work}",
    recipe_ignores=frozenset(f.name for f in dataclasses.fields(BuildConfig)) - frozenset(f.name for f in dataclasses.fields(ScoreConfig)),
)
config_command(
    "build",
    BuildConfig,
    _build,
    "Build a condensed dataset: score (cached), select, attach, package in the Hub layout.",
    ["d2c-pack build --recipe demo", "d2c-pack build --recipe imagenet-256-d2c-10k --source /data/imagenet/train --out imagenet-10k"],
    kept=lambda config: f"what was scored and attached so far is cached in {config.work}",
)
config_command(
    "train",
    TrainConfig,
    _train,
    "Train a SiT backbone with the velocity objective (resumable; writes OUT/model at the end).",
    ["d2c-pack train --recipe demo --data out/digits-d2c --out runs/demo", "d2c-pack train --data ORG/NAME@v1.0 --out runs/sit-xl --steps 400000"],
    kept=lambda config: f"the checkpoints written so far are in {Path(config.out) / 'checkpoints'}",
)
config_command(
    "demo",
    DemoConfig,
    _demo,
    "Run the whole flow on the embedded digits: build, publish, load, train with D2C, sample, FID. Its build and "
    "training settings are the shipped demo recipe's.",
    ["d2c-pack demo", "d2c-pack demo --out demo-out --push-to ORG/digits-d2c"],
    recipe=False,
    kept=lambda config: f"the finished stages and the training's checkpoints are in {config.out}",
)
config_command(
    "train-encoder",
    EncoderTrainConfig,
    _train_encoder,
    "Train a small DINOv2-architecture classifier on a source (the demo's visual encoder).",
    ["d2c-pack train-encoder --recipe demo-encoder --out runs/demo-encoder"],
)
config_command(
    "sample",
    SampleConfig,
    _sample,
    "Sample a trained model: a PNG grid per class, or an ADM-evaluator .npz (Euler / Heun / dopri5 ODE, Euler–Maruyama SDE, CFG). "
    "Takes the sample: section of a recipe.",
    ["d2c-pack sample --recipe demo runs/demo --out grid.png", "d2c-pack sample runs/sit-xl --out samples.npz --sampling-steps 250 --sampler euler-maruyama --cfg-scale 1.8 --guidance-high 0.7"],
)
config_command(
    "eval",
    EvalConfig,
    _eval,
    "The ADM suite (FID, sFID, IS, precision, recall; accuracy with a classifier encoder) of a model's samples or of an ADM .npz. "
    "Takes the eval: section of a recipe.",
    ["d2c-pack eval --recipe demo runs/demo --data out/digits-d2c", "d2c-pack eval --samples samples.npz --reference VIRTUAL_imagenet256_labeled.npz"],
)
config_command(
    "push",
    PushConfig,
    _push,
    "Publish a built dataset folder as a versioned Hub dataset (token: HF_TOKEN or `hf auth login`).",
    ["d2c-pack push ORG/digits-d2c --from out/digits-d2c --tag v1.0"],
    recipe=False,
    kept=lambda config: "the files uploaded so far stay on the Hub and are not sent again",
)
config_command(
    "verify",
    VerifyConfig,
    _verify,
    "Check a condensed dataset: every file against the manifest's sha256 and size, every parquet schema against the card.",
    ["d2c-pack verify out/digits-d2c", "d2c-pack verify ORG/digits-d2c@v1.0"],
    recipe=False,
)
config_command(
    "inspect",
    InspectConfig,
    _inspect,
    "Summary tables of a condensed dataset: rows, classes, selection, columns and shapes, size.",
    ["d2c-pack inspect out/digits-d2c", "d2c-pack inspect ORG/digits-d2c@v1.0"],
    recipe=False,
)
config_command(
    "card",
    CardConfig,
    _card,
    "Render the dataset card (README.md) again from the manifest, with a new licence, description or title, and re-seal the manifest. "
    "The settings are recorded in d2c/recipe.yaml and the manifest: `verify` passes, `push` accepts the folder, and a rebuild from the "
    "recipe gives the same card. A hand edit of README.md fails `verify`.",
    ['d2c-pack card out/digits-d2c --license cc-by-4.0 --description "Digits condensed to 10% for a quick test."'],
    recipe=False,
)
config_command(
    "explore",
    ExploreConfig,
    _explore,
    "Write one self-contained HTML page (no server, nothing fetched) of a condensed dataset: per class, every source image's "
    "difficulty along the ranking with the selected ones marked, thumbnails of selected and rejected images, class search, "
    f"and the budget, selector, stride and scorer used. Reads the 'scores' config: no model runs. {PAGE_CONTENTS}",
    ["d2c-pack explore ORG/digits-d2c@v1.0 --out explore.html --source demo:digits"],
    recipe=False,
)
config_command(
    "export",
    ExportConfig,
    _export,
    "Write a condensed dataset in another trainer's layout: REPA's preprocessed images/ + vae-sd/ (its train.py --data-dir; needs the "
    "latent column), or an ImageFolder tree (DiT/SiT/fast-DiT train.py --data-path) whose class folders sort in label order. "
    "Resumable: re-running the same export continues it.",
    ["d2c-pack export ORG/NAME@v1.0 --format repa --out repa-data", "d2c-pack export out/digits-d2c --format imagefolder --out digits-imagefolder"],
    recipe=False,
    kept=lambda config: f"the files exported so far are in {config.out}",
)


def main() -> None:
    """Console entry point: runs the app and turns user errors, and Hub failures that retries did not
    cure, into one line and exit code 2; an interruption (Ctrl-C, SIGTERM) into one line and 130 / 143."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except Interrupted as interrupted:
        stderr.print(f"[bold]{interrupted}[/]", highlight=False, soft_wrap=True, markup=True)
        sys.exit(interrupted.status)
    except Exception as err:
        from d2c_pack.core.hub_retry import hub_failure, hub_problem  # the Hub client: imported only when something failed

        failure = None if isinstance(err, UserError) else hub_failure(err)
        if _show_tracebacks or not (isinstance(err, UserError) or failure):
            raise
        message = err if failure is None else f"a request to the Hub failed: {hub_problem(failure)}"
        stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(2)

