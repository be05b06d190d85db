"""The settings of Attach (build's ``Attach`` flags) and the default models it attaches with."""

from __future__ import annotations

import dataclasses

from d2c_pack.core.errors import UserError
from d2c_pack.core.options import ATTACH, RUN, flag

DEFAULT_PROMPT_TEMPLATE = "a photo of a {name}"

DEFAULT_VISUAL_ENCODER = "facebook/dinov2-base"


@dataclasses.dataclass(kw_only=True)
class AttachArgs:
    """The Attach flags of ``d2c-pack build``; ``none`` for a model leaves its columns out."""

    text_encoder: str | None = flag("google/flan-t5-xl", help="transformers text encoder (T5, CLIP text, BERT-like, demo:minilm), or 'none' for no caption/text columns.", panel=ATTACH)
    prompt_template: str = flag(DEFAULT_PROMPT_TEMPLATE, help="Caption of every image of a class; {name} is the first synonym of the class name.", panel=ATTACH)
    captioner: str | None = flag(None, help="transformers image-to-text model captioning each image instead of the class prompt.", panel=ATTACH)
    visual_encoder: str | None = flag(DEFAULT_VISUAL_ENCODER, help="DINOv2 (transformers name or path, timm/NAME, demo:digits-encoder), or 'none' for no visual columns.", panel=ATTACH)
    vae: str | None = flag(
        "stabilityai/sd-vae-ft-ema",
        help="diffusers AutoencoderKL (a local folder or a Hub id, optionally ID@REVISION) of the latent column and of a latent-space scorer; 'none': no latent column (the scorer then uses its own).",
        panel=ATTACH,
    )
    attach_batch_size: int = flag(32, help="Images per batch while attaching.", panel=RUN)

    def __post_init__(self) -> None:
        for name in ("text_encoder", "captioner", "visual_encoder", "vae"):
            if getattr(self, name) in ("none", ""):
                setattr(self, name, None)
        if self.captioner and not self.text_encoder:
            raise UserError("--captioner needs a --text-encoder to embed its captions")


def encoder_input_size(resolution: int) -> int:
    """Side S of the encoder's input for crops of side R: 224·R/256, rounded down."""
    return 224 * resolution // 256
