"""The ImageNet-1k label space, the same whatever layout the images come in.

The official DiT and SiT checkpoints were trained with the label index of the Hub dataset
``ILSVRC/imagenet-1k``: the 1,000 WordNet ids (synsets) in sorted order, ``n01440764`` (tench)
= 0 … ``n15075141`` (toilet tissue) = 999. A scorer conditioned on any other index scores an
image against the wrong class, so every source of ImageNet images is mapped onto this space:

- a folder tree of synset folders (``n01440764/…``), also one holding only some of them;
- a ``datasets`` source (parquet, Hub) whose ``ClassLabel`` holds the 1,000 ImageNet names in
  the official order, or synset ids in any order.

Class names are the ImageNet lemmas (``"tench, Tinca tinca"``) made unique: two synsets share
the name ``"crane"`` (the bird n02012849 and the machine n03126707), and a name that several
classes share gets its class id appended — ``"crane (n02012849)"``, ``"crane (n03126707)"``.

Images get the id of the original ImageNet file, so that the same image has the same
``source_id`` (and so the same scoring noise and score) in every layout: ``n01440764_10026``
from ``n01440764/n01440764_10026.JPEG`` as much as from the Hub's
``n01440764_10026_n01440764.JPEG``.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections import Counter
from collections.abc import Sequence

NUM_CLASSES = 1000
WORDNET_ID = re.compile(r"n\d{8}")
# The original ILSVRC-2012 file stem (train n01440764_10026, val/test ILSVRC2012_val_00000001), optionally
# followed by the synset the Hub's copy appends to it, then the extension.
_IMAGE_FILE = re.compile(r"(n\d{8}_\d+|ILSVRC2012_(?:val|test)_\d{8})(?:_n\d{8})?\.[A-Za-z]+")


@functools.cache
def synsets() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids in label order (sorted)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


@functools.cache
def synset_index() -> dict[str, int]:
    """WordNet id → ImageNet-1k label index."""
    return {synset: index for index, synset in enumerate(synsets())}


@functools.cache
def lemmas() -> tuple[str, ...]:
    """The ImageNet lemmas of the 1,000 classes in label order, as published ("tench, Tinca tinca"; "crane" twice)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return tuple(info.label_name_to_description(synset) for synset in synsets())


@functools.cache
def class_names() -> tuple[str, ...]:
    """The unique class names of ImageNet-1k in label order (see the module docstring)."""
    return tuple(unique_names(lemmas(), synsets()))


def unique_names(names: Sequence[str], ids: Sequence[str]) -> list[str]:
    """``names`` with every name that more than one class has suffixed by that class's id: ``"crane (n02012849)"``."""
    counts = Counter(names)
    return [f"{name} ({id_})" if counts[name] > 1 else name for name, id_ in zip(names, ids)]


def is_synset(name: str) -> bool:
    """Whether ``name`` is the WordNet id of one of the 1,000 ImageNet-1k classes."""
    return name in synset_index()


def is_label_space(names: Sequence[str]) -> bool:
    """Whether ``names`` are ImageNet-1k's 1,000 classes in the official order.

    Copies of ImageNet spell a few names their own way (the two "crane"s above all, which a
    ``ClassLabel`` cannot hold twice), so 990 names equal to the lemmas or to the unique names
    at their positions are enough.
    """
    if len(names) != NUM_CLASSES:
        return False
    matches = sum(name in (lemma, unique) for name, lemma, unique in zip(names, lemmas(), class_names()))
    return matches >= NUM_CLASSES - 10


def image_id(path: str) -> str | None:
    """The original ImageNet file stem of an image path or name, or None if the name is not ImageNet's."""
    match = _IMAGE_FILE.fullmatch(posixpath.basename(path))
    return match[1] if match else None
