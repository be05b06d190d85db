"""Tests for d2c_pack.sources.preprocess: mode conversion, the ADM crop, tensor round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from d2c_pack.sources.preprocess import center_crop_adm, image_to_tensor, tensor_to_image, to_rgb


def dit_center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """DiT's train.py ``center_crop_arr``, copied verbatim as the reference."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)

    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )

    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size])


def random_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def reopen(image: Image.Image, fmt: str, **save_args) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    ("width", "height", "resolution"),
    [
        (513, 301, 64),
        (301, 777, 64),
        (1000, 1000, 256),
        (255, 255, 256),
        (1, 1, 8),
        (2, 3, 8),
        (777, 513, 100),
        (64, 64, 32),
    ],
)
def test_center_crop_matches_dit(width: int, height: int, resolution: int) -> None:
    image = random_rgb(width, height, seed=width * 1000 + height)
    ours = center_crop_adm(image, resolution)
    reference = dit_center_crop_arr(image, resolution)
    assert ours.mode == "RGB"
    assert ours.size == (resolution, resolution)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))


def test_center_crop_converts_before_cropping() -> None:
    gray = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 70), dtype=np.uint8))
    ours = center_crop_adm(gray, 16)
    assert ours.mode == "RGB" and ours.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(dit_center_crop_arr(gray.convert("RGB"), 16)))


def test_center_crop_rejects_bad_resolution() -> None:
    with pytest.raises(ValueError):
        center_crop_adm(random_rgb(4, 4), 0)


def test_grayscale_and_bilevel() -> None:
    gray = Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8))
    assert np.asarray(to_rgb(gray)).tolist() == [[[0] * 3, [100] * 3, [255] * 3]]
    bilevel = gray.convert("1")
    assert to_rgb(bilevel).mode == "RGB"
    assert np.asarray(to_rgb(bilevel))[0, :, 0].tolist() == [0, 0, 255]


def test_cmyk() -> None:
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    rgb = to_rgb(reopen(cmyk, "JPEG", quality=100))
    assert rgb.mode == "RGB"
    red, green, blue = np.asarray(rgb)[0, 0].tolist()
    assert red > 200 and green < 50 and blue < 50


def test_rgba_composited_over_white() -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    rgba.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    pixels = np.asarray(to_rgb(rgba)).tolist()[0]
    assert pixels[0] == [255, 255, 255]
    assert pixels[1] == [255, 0, 0]
    assert all(126 <= value <= 128 for value in pixels[2])


def test_la_composited_over_white() -> None:
    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(to_rgb(la)).tolist() == [[[255, 255, 255]]]


def palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255, 0, 255, 0])
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    return image


def test_palette_without_transparency() -> None:
    rgb = to_rgb(reopen(palette_image(), "PNG"))
    assert np.asarray(rgb).tolist() == [[[0, 0, 255], [0, 255, 0]]]


def test_palette_with_transparency() -> None:
    reopened = reopen(palette_image(), "PNG", transparency=0)
    assert reopened.mode == "P" and "transparency" in reopened.info
    assert np.asarray(to_rgb(reopened)).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def test_palette_with_alpha() -> None:
    pa = palette_image().convert("PA")
    pa.putpixel((0, 0), (0, 0))
    assert np.asarray(to_rgb(pa)).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 128, 129, 257, 1000, 32767, 40000, 65535]], dtype=np.uint16)
    reopened = reopen(Image.fromarray(values), "PNG")
    assert reopened.mode in {"I;16", "I"}
    expected = [round(int(v) / 257) for v in values[0]]
    for image in (reopened, reopened.convert("I")):
        rgb = np.asarray(to_rgb(image))
        assert rgb.dtype == np.uint8
        assert rgb[0, :, 0].tolist() == expected
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_big_endian_sixteen_bit() -> None:
    values = np.array([[0, 514, 65535]], dtype=">u2")
    image = Image.frombytes("I;16B", (3, 1), values.tobytes())
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 2, 255]


def test_thirty_two_bit_integer_beyond_sixteen_bits() -> None:
    values = np.array([[-5, 0, 2**30, 2**31 - 1]], dtype=np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 0, 128, 255]


def test_float_images() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255, 0]
    byte_scale = Image.fromarray(np.array([[-3.0, 100.4, 300.0]], dtype=np.float32))
    assert np.asarray(to_rgb(byte_scale))[0, :, 0].tolist() == [0, 100, 255]


def test_exif_rotated_jpeg() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    reopened = reopen(image, "JPEG", quality=95, exif=exif)
    assert reopened.size == (40, 20)
    upright = to_rgb(reopened)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright).astype(int)
    assert pixels[:15].mean() > 200  # the white half is now on top
    assert pixels[25:].mean() < 50
    assert center_crop_adm(reopened, 8).size == (8, 8)


def test_rgb_is_returned_unchanged() -> None:
    image = random_rgb(5, 7)
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), np.asarray(image))


def test_tensor_round_trip() -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = Image.fromarray(np.stack([values, values.T, 255 - values], axis=-1))
    tensor = image_to_tensor(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 16, 16)
    assert tensor.min().item() == -1.0 and tensor.max().item() == 1.0
    assert tensor[0, 0, 0].item() == -1.0 and tensor[0, 15, 15].item() == 1.0
    back = tensor_to_image(tensor)
    assert back.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(back), np.asarray(image))


def test_tensor_to_image_clamps() -> None:
    tensor = torch.tensor([-3.0, 0.0, 5.0]).view(3, 1, 1)
    assert np.asarray(tensor_to_image(tensor)).tolist() == [[[0, 128, 255]]]


def test_image_to_tensor_converts_other_modes() -> None:
    gray = Image.new("L", (2, 3), 255)
    tensor = image_to_tensor(gray)
    assert tensor.shape == (3, 3, 2)
    assert torch.equal(tensor, torch.ones(3, 3, 2))
