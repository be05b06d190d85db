"""The embedded demo: models trained by this project on scikit-learn's handwritten digits.

``digits-scorer/`` holds the EMA weights of a tiny pixel-space SiT trained on all of
``demo:digits`` by ``d2c-pack train --recipe demo-scorer`` (see that recipe to rebuild them).
"""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
# Backbone names usable wherever a checkpoint path is expected.
DEMO_BACKBONES = {"demo:digits": DEMO_DIR / "digits-scorer"}
