"""``python -m d2c_pack.demo MODEL_DIR NAME``: install trained demo weights into the package, in float16.

Halving the committed weights keeps the repository small; ``load_backbone`` casts them back
to float32 on load. Example (after ``d2c-pack train --recipe demo-scorer --out runs/demo-scorer``)::

    python -m d2c_pack.demo runs/demo-scorer/model digits-scorer
"""

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from d2c_pack.demo import DEMO_DIR
from d2c_pack.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME


def install(model_dir: Path, name: str) -> Path:
    target = DEMO_DIR / name
    target.mkdir(exist_ok=True)
    shutil.copyfile(model_dir / CONFIG_NAME, target / CONFIG_NAME)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(model_dir / WEIGHTS_NAME)).items()}
    save_file(weights, str(target / WEIGHTS_NAME))
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"installed {install(Path(sys.argv[1]), sys.argv[2])}")
