"""Attach, text part: class prompts, token embeddings of any text encoder, per-image captions.

Every model but MiniLM (really packaged on PyPI) is tiny, random, built from a config and saved
with ``save_pretrained``, so the code under test loads it through ``from_pretrained`` as users do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import noise_image
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from d2c_pack.attach.text import (
    TEXT_LENGTH,
    Captioner,
    TextEncoder,
    class_prompts,
    encode_class_prompts,
    first_synonym,
)
from d2c_pack.core.errors import UserError
from d2c_pack.core.registry import resolve_model_path

WORDS = ["a", "photo", "of", "tench", "great", "white", "shark", "goldfish", "crane", "the", "on", "in", "dog", "cat", "sitting", "red"]
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
PAD, UNK, BOS, EOS = range(4)
VOCAB = len(SPECIALS) + len(WORDS)
TEXTS = ["a photo of a tench", "great white shark", " ".join(["a red dog sitting on the cat"] * 4)]


def word_tokenizer(*, pad: bool = True, padding_side: str = "right") -> transformers.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``WORDS``; without ``pad`` it is GPT-2 style (eos only)."""
    backend = Tokenizer(WordLevel({token: i for i, token in enumerate(SPECIALS + WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    specials = {"unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
    if pad:
        specials["pad_token"] = "[PAD]"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=padding_side, **specials)


def save(model: transformers.PreTrainedModel, folder: Path, **tokenizer_args) -> transformers.PreTrainedModel:
    model.save_pretrained(folder)
    word_tokenizer(**tokenizer_args).save_pretrained(folder)
    return model.eval()


# Text-encoder builders: each saves a tiny model with the word tokenizer into ``folder`` and returns
# the model's own computation of the token embeddings, the reference ``TextEncoder`` must match.
def tiny_t5(folder: Path) -> Callable[..., torch.Tensor]:
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
    )  # fmt: skip
    model = save(transformers.T5ForConditionalGeneration(config), folder)
    return lambda **batch: model.encoder(**batch).last_hidden_state


def tiny_bart(folder: Path) -> Callable[..., torch.Tensor]:
    config = transformers.BartConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip
    model = save(transformers.BartModel(config), folder)
    return lambda **batch: model.get_encoder()(**batch).last_hidden_state


def tiny_clip(folder: Path) -> Callable[..., torch.Tensor]:
    config = transformers.CLIPConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=8,
    )  # fmt: skip
    model = save(transformers.CLIPModel(config), folder)
    return lambda **batch: model.text_model(**batch).last_hidden_state


def tiny_siglip(folder: Path) -> Callable[..., torch.Tensor]:
    config = transformers.SiglipConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": 20, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
    )  # fmt: skip
    model = save(transformers.SiglipModel(config), folder)
    return lambda **batch: model.text_model(**batch).last_hidden_state


def tiny_bert(folder: Path) -> Callable[..., torch.Tensor]:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, pad_token_id=PAD
    )
    model = save(transformers.BertModel(config), folder)
    return lambda **batch: model(**batch).last_hidden_state


def tiny_gpt2(folder: Path) -> Callable[..., torch.Tensor]:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=12, n_layer=1, n_head=2, n_positions=32, bos_token_id=BOS, eos_token_id=EOS)
    model = save(transformers.GPT2Model(config), folder, pad=False, padding_side="left")
    return lambda **batch: model(**batch).last_hidden_state


def test_first_synonym_and_class_prompts() -> None:
    assert first_synonym("tench, Tinca tinca") == "tench"
    assert first_synonym("great white shark, white shark, man-eater, Carcharodon carcharias") == "great white shark"
    assert first_synonym("  crane ") == "crane"
    names = ["tench, Tinca tinca", "goldfish, Carassius auratus", "crane"]
    assert class_prompts(names) == ["a photo of a tench", "a photo of a goldfish", "a photo of a crane"]
    assert class_prompts(names[:1], "{name}, in the wild") == ["tench, in the wild"]
    for template in ["a photo", "a photo of a {}", "{name} by {author}", "a {name", "a {{name}}"]:
        with pytest.raises(UserError, match="template"):
            class_prompts(names, template)


def test_minilm_embeddings_equal_the_model_outputs() -> None:
    path = resolve_model_path("demo:minilm")
    encoder = TextEncoder("demo:minilm", batch_size=2)  # two batches for three texts
    encoding = encoder.encode(TEXTS)
    assert (encoder.name, encoder.dim) == ("demo:minilm", 384)
    assert encoding.embedding.shape == (3, TEXT_LENGTH, 384) and encoding.embedding.dtype == np.float16
    assert encoding.mask.shape == (3, TEXT_LENGTH) and encoding.mask.dtype == np.int8

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(TEXTS, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
    np.testing.assert_array_equal(encoding.mask, batch["attention_mask"].numpy())
    assert len(tokenizer(TEXTS[2])["input_ids"]) > TEXT_LENGTH and encoding.mask[2].all()  # truncated to L
    assert encoding.mask[0].sum() == 8  # [CLS] a photo of a ten ##ch [SEP]
    assert not encoding.embedding[encoding.mask == 0].any()

    with torch.no_grad():
        reference = transformers.AutoModel.from_pretrained(path).eval()(**batch).last_hidden_state
    reference = (reference * batch["attention_mask"][..., None]).numpy()
    np.testing.assert_allclose(encoding.embedding.astype(np.float32), reference, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize(
    ("build", "loaded_class", "dim"),
    [
        (tiny_t5, transformers.T5EncoderModel, 32),
        (tiny_bart, transformers.models.bart.modeling_bart.BartEncoder, 16),  # any encoder–decoder: its encoder
        (tiny_clip, transformers.CLIPTextModel, 24),
        (tiny_siglip, transformers.SiglipTextModel, 20),
        (tiny_bert, transformers.BertModel, 16),
        (tiny_gpt2, transformers.GPT2Model, 12),  # no pad token: pads with eos; left padding turned right
    ],
)
def test_text_encoder_loads_the_encoder_only(tmp_path: Path, build: Callable, loaded_class: type, dim: int) -> None:
    torch.manual_seed(0)
    reference_of = build(tmp_path)
    encoder = TextEncoder(str(tmp_path))
    assert type(encoder.model) is loaded_class and encoder.dim == dim
    assert not any(name.startswith(("decoder.", "vision_model.")) for name in encoder.model.state_dict())
    encoding = encoder.encode(TEXTS)
    assert encoding.embedding.shape == (3, TEXT_LENGTH, dim)

    tokenizer = word_tokenizer()
    batch = tokenizer(TEXTS, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
    np.testing.assert_array_equal(encoding.mask, batch["attention_mask"].numpy())
    assert encoding.mask[:, 0].all() and not encoding.mask[0, -1]  # padded on the right
    with torch.no_grad():
        reference = reference_of(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    reference = (reference * batch["attention_mask"][..., None]).numpy()
    np.testing.assert_allclose(encoding.embedding.astype(np.float32), reference, rtol=1e-3, atol=2e-3)
    assert not encoding.embedding[encoding.mask == 0].any()


def test_fingerprint_identifies_weights_and_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tiny_bert(tmp_path / "a")
    torch.manual_seed(1)
    tiny_bert(tmp_path / "b")
    first = TextEncoder(str(tmp_path / "a")).fingerprint()
    assert len(first) == 64 and int(first, 16) >= 0
    assert TextEncoder(str(tmp_path / "a")).fingerprint() == first
    assert TextEncoder(str(tmp_path / "b")).fingerprint() != first
    assert TextEncoder(str(tmp_path / "a"), max_length=8).fingerprint() != first


def test_encode_class_prompts_encodes_each_distinct_prompt_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tiny_bert(tmp_path)
    encoder = TextEncoder(str(tmp_path))
    encoded_rows: list[int] = []
    encoder.model.register_forward_hook(
        lambda module, args, kwargs, output: encoded_rows.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    names = ["crane", "tench, Tinca tinca", "goldfish, Carassius auratus", "crane, derrick"]
    encoding = encode_class_prompts(encoder, names)
    assert sum(encoded_rows) == 3  # "a photo of a crane" once for two classes
    assert encoding.embedding.shape == (4, TEXT_LENGTH, 16) and encoding.mask.shape == (4, TEXT_LENGTH)
    np.testing.assert_array_equal(encoding.embedding[0], encoding.embedding[3])
    for row, prompt in enumerate(class_prompts(names)):  # rows in class order
        alone = encoder.encode([prompt])
        np.testing.assert_array_equal(encoding.embedding[row], alone.embedding[0])
        np.testing.assert_array_equal(encoding.mask[row], alone.mask[0])
    assert not np.array_equal(encoding.embedding[0], encoding.embedding[1])


# Captioning weights: large enough that the image changes the caption, with the special tokens' logits
# at zero so that greedy decoding picks words instead of ending at once.
INIT = 0.5


def words_only(head: torch.nn.Linear) -> None:
    with torch.no_grad():
        head.weight[: len(SPECIALS)] = 0


def tiny_vit_gpt2(folder: Path) -> transformers.PreTrainedModel:
    """The nlpconnect/vit-gpt2-image-captioning layout: ViT encoder, GPT-2 decoder, ViTImageProcessor."""
    vit = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, initializer_range=INIT
    )
    gpt2 = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=64, bos_token_id=BOS, eos_token_id=EOS, initializer_range=INIT
    )
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt2)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS, PAD, EOS
    model = transformers.VisionEncoderDecoderModel(config=config)
    words_only(model.decoder.get_output_embeddings())
    model.generation_config.do_sample = True  # what the checkpoint asks for; captions stay greedy
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return model.eval()


def tiny_blip(folder: Path) -> transformers.PreTrainedModel:
    config = transformers.BlipConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "bos_token_id": BOS, "sep_token_id": EOS, "eos_token_id": EOS, "pad_token_id": PAD, "encoder_hidden_size": 16, "initializer_range": INIT},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                       "initializer_range": INIT},
        projection_dim=8, initializer_range=INIT,
    )  # fmt: skip
    model = transformers.BlipForConditionalGeneration(config)
    words_only(model.text_decoder.get_output_embeddings())
    model.save_pretrained(folder)
    transformers.BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("build", [tiny_vit_gpt2, tiny_blip])
def test_captioner_is_greedy_and_deterministic(tmp_path: Path, build: Callable) -> None:
    torch.manual_seed(0)
    model = build(tmp_path)
    images = [noise_image((40, 30), seed) for seed in range(3)] + [noise_image((32, 32), 9, mode="RGBA")]
    captioner = Captioner(str(tmp_path), max_new_tokens=6, batch_size=3)
    captions = captioner.caption(images)
    assert len(captions) == 4 and all(isinstance(caption, str) for caption in captions)
    assert captioner.caption(images) == captions
    assert all(captions) and all(caption == caption.strip() for caption in captions)
    assert len(set(captions)) > 1  # the image drives the caption

    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    pixel_values = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = model.generate(pixel_values=pixel_values, max_new_tokens=6, do_sample=False, num_beams=1)
    assert captions == [text.strip() for text in word_tokenizer().batch_decode(tokens, skip_special_tokens=True)]
    assert len(captioner.fingerprint()) == 64


def test_tokenizer_without_pad_or_eos_is_a_user_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tiny_bert(tmp_path)
    tokenizer = word_tokenizer(pad=False)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="neither a pad nor an eos token"):
        TextEncoder(str(tmp_path))


def test_missing_model_is_a_one_line_user_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(UserError, match=r"^cannot load the text encoder '.*no-such-model': ") as error:
        TextEncoder(missing)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match=r"^cannot load the captioning model '.*no-such-model': ") as error:
        Captioner(missing)
    assert "\n" not in str(error.value)
