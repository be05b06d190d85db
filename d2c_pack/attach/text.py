"""The text columns of Attach: a caption per image and its token embeddings.

A caption is either the class prompt (``a photo of a {name}`` with the first synonym of the
class name) or a per-image caption from an image-to-text model. Its embedding is the
``last_hidden_state`` of a transformers text encoder (flan-T5's encoder by default; CLIP,
SigLIP, BERT-like models work as well), padded/truncated to L = 16 tokens:

    text_embedding  (L, D)  float16, zeros where the mask is 0 (the trainer's "null text" pattern)
    text_mask       (L,)    int8, 1 for real tokens

Captions are always padded on the right, so token i of every caption sits in row i whatever
the tokenizer's own padding side: the DC-Embedding's Conv1d weighs each row by its position.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from d2c_pack.attach.settings import DEFAULT_PROMPT_TEMPLATE
from d2c_pack.core.errors import UserError, first_line
from d2c_pack.core.fingerprint import module_sha256, sha256_json
from d2c_pack.core.progress import quiet_loading_bars
from d2c_pack.core.registry import resolve_model_path

T = TypeVar("T")
TEXT_LENGTH = 16  # L: tokens kept per caption (padded / truncated)
_WORDNET_SUFFIX = re.compile(r" \(n\d{8}\)$")

# Encoder–decoder checkpoints whose encoder transformers can load on its own, without the decoder.
_ENCODER_ONLY_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
    # A whole CLIP / SigLIP checkpoint: keep the text tower only.
    "clip": "CLIPTextModel",
    "clip_text_model": "CLIPTextModel",
    "siglip": "SiglipTextModel",
    "siglip_text_model": "SiglipTextModel",
}


def first_synonym(class_name: str) -> str:
    """The first of the comma-separated synonyms of an ImageNet-style class name ("tench, Tinca tinca" → "tench").

    The WordNet id that tells apart two ImageNet classes of one name is no word: "crane (n02012849)" → "crane".
    """
    return _WORDNET_SUFFIX.sub("", class_name).split(",")[0].strip()


def class_prompts(class_names: list[str], template: str = DEFAULT_PROMPT_TEMPLATE) -> list[str]:
    """One prompt per class: ``template`` with ``{name}`` replaced by the class's first synonym."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError:  # an unmatched brace
        fields = set()
    if fields != {"name"}:
        raise UserError(f"the prompt template {template!r} must have a {{name}} placeholder and no other")
    return [template.format(name=first_synonym(name)) for name in class_names]


@dataclasses.dataclass
class TextEncoding:
    """Token embeddings of n captions, padded/truncated to L tokens."""

    embedding: np.ndarray  # (n, L, D) float16, zeros where mask is 0
    mask: np.ndarray  # (n, L) int8, 1 for real tokens



def _autocast(device: torch.device) -> torch.autocast:
    # Weights stay float32 (T5 overflows in float16); bf16 autocast speeds CUDA up, CPU runs exact.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _from_pretrained(name_or_path: str, what: str, load: Callable[[str], T]) -> T:
    """``load(path)`` of a transformers model folder or Hub id (or a registered name), a failure told in one line naming ``what``."""
    path = resolve_model_path(name_or_path)
    quiet_loading_bars()
    try:
        return load(path)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load the {what} {name_or_path!r}: {first_line(err)}") from None


class _FrozenTextModel:
    """A frozen transformers model with its tokenizer, identified by its weights, vocabulary size and settings."""

    model: torch.nn.Module
    tokenizer: Any

    def __init__(self, name_or_path: str, device: torch.device | str, batch_size: int):
        self.name = name_or_path
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    def _settings(self) -> dict:
        """The settings besides the weights that change what the model outputs."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 of the weights, the tokenizer's vocabulary size and :meth:`_settings`: what produced the outputs, for cache keys."""
        if self._fingerprint is None:  # hashing billions of weights takes seconds: do it once
            weights = module_sha256(self.model)
            self._fingerprint = sha256_json({"weights": weights, "vocab_size": len(self.tokenizer), **self._settings()})
        return self._fingerprint


class TextEncoder(_FrozenTextModel):
    """Token embeddings of any transformers text encoder, padded/truncated to L tokens."""

    def __init__(
        self,
        name_or_path: str,
        device: torch.device | str = "cpu",
        max_length: int = TEXT_LENGTH,
        batch_size: int = 64,
    ):
        import transformers  # a heavy import, only paid where text is encoded

        super().__init__(name_or_path, device, batch_size)
        self.max_length = max_length

        def load(path: str) -> tuple:
            config = transformers.AutoConfig.from_pretrained(path)
            model_class = getattr(transformers, _ENCODER_ONLY_CLASSES.get(config.model_type, "AutoModel"))
            return config, model_class, model_class.from_pretrained(path, dtype=torch.float32), transformers.AutoTokenizer.from_pretrained(path)

        config, model_class, model, self.tokenizer = _from_pretrained(name_or_path, "text encoder", load)
        if config.is_encoder_decoder and model_class is transformers.AutoModel:
            model = model.get_encoder()  # BART-like: AutoModel loads both halves, keep the encoder
        if self.tokenizer.pad_token is None:  # GPT-2 style tokenizers pad with their end-of-text token
            if self.tokenizer.eos_token is None:
                raise UserError(f"the tokenizer of {name_or_path!r} has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    def _settings(self) -> dict:
        return {"max_length": self.max_length}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextEncoding:
        """The (n, L, D) float16 embeddings and (n, L) int8 masks of ``texts``, in order."""
        embedding = np.zeros((len(texts), self.max_length, self.dim), dtype=np.float16)
        mask = np.zeros((len(texts), self.max_length), dtype=np.int8)
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding="max_length",
                max_length=self.max_length,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            with _autocast(self.device):
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            hidden = hidden.float() * batch["attention_mask"][..., None]
            embedding[start : start + len(hidden)] = hidden.cpu().numpy()
            mask[start : start + len(hidden)] = batch["attention_mask"].cpu().numpy()
        return TextEncoding(embedding=embedding, mask=mask)


def encode_class_prompts(
    encoder: TextEncoder, class_names: list[str], template: str = DEFAULT_PROMPT_TEMPLATE
) -> TextEncoding:
    """One encoding per class (row c for class c), each distinct prompt encoded once; index it by label."""
    prompts = class_prompts(class_names, template)
    distinct = list(dict.fromkeys(prompts))  # classes sharing a first synonym share a prompt
    encoding = encoder.encode(distinct)
    rows = [distinct.index(prompt) for prompt in prompts]
    return TextEncoding(embedding=encoding.embedding[rows], mask=encoding.mask[rows])


class Captioner(_FrozenTextModel):
    """Per-image captions from any transformers image-to-text model (BLIP, ViT-GPT2 VisionEncoderDecoder, ...).

    transformers 5 dropped the "image-to-text" pipeline; its replacement, "image-text-to-text",
    is built around chat prompts. A caption-only model is loaded here as
    ``AutoModelForImageTextToText`` (which maps ``vision-encoder-decoder`` and ``blip`` among
    others) with its ``AutoImageProcessor`` and ``AutoTokenizer``, and captions come from
    ``generate(pixel_values=...)`` with greedy decoding.
    """

    def __init__(
        self,
        name_or_path: str,
        device: torch.device | str = "cpu",
        max_new_tokens: int = 30,
        batch_size: int = 16,
    ):
        import transformers  # a heavy import, only paid where images are captioned

        super().__init__(name_or_path, device, batch_size)
        self.max_new_tokens = max_new_tokens

        def load(path: str) -> tuple:
            # The image processor and tokenizer are loaded apart rather than through AutoProcessor: VisionEncoderDecoder folders have no processor.
            model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
            return model, transformers.AutoImageProcessor.from_pretrained(path), transformers.AutoTokenizer.from_pretrained(path)

        model, self.image_processor, self.tokenizer = _from_pretrained(name_or_path, "captioning model", load)
        self.model = model.to(self.device).eval().requires_grad_(False)

    def _settings(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens}

    @torch.no_grad()
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order; greedy decoding, so the same images give the same captions."""
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            pixel_values = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with _autocast(self.device):
                tokens = self.model.generate(
                    pixel_values=pixel_values, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
                )
            captions += [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        return captions
