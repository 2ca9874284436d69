"""core.images: file round trips and ComfyUI IMAGE / MASK tensor checks."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posetransfer.core.images import (images_to_tensor, load_image, mask_to_tensor, save_image, tensor_to_images,
                                      tensor_to_mask)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_load_sample_is_rgb_float():
    img = load_image(SAMPLES / "model_red_background.png")
    assert img.dtype == np.float32 and img.shape == (400, 400, 3)
    assert 0.0 <= img.min() and img.max() <= 1.0
    corner = img[20:60, 60:120].reshape(-1, 3).mean(axis=0)
    assert corner[0] > corner[1] + 0.2 and corner[0] > corner[2] + 0.2  # red background: RGB, not BGR


def test_save_load_round_trip_float_and_uint8(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    save_image(tmp_path / "a.png", u8)
    np.testing.assert_array_equal(np.round(load_image(tmp_path / "a.png") * 255).astype(np.uint8), u8)
    save_image(tmp_path / "b.png", u8.astype(np.float32) / 255)
    np.testing.assert_array_equal(np.round(load_image(tmp_path / "b.png") * 255).astype(np.uint8), u8)


def test_load_drops_alpha_and_expands_grey(tmp_path):
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 200, 0  # blue, fully transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    img = load_image(tmp_path / "rgba.png")
    assert img.shape == (4, 5, 3)
    np.testing.assert_allclose(img[0, 0], [0, 0, 200 / 255], atol=1e-6)  # alpha dropped, not composited
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((3, 3), 51, np.uint8))
    np.testing.assert_allclose(load_image(tmp_path / "grey.png"), 0.2, atol=1e-6)


def test_load_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_images_to_tensor_and_back():
    a = np.zeros((6, 8, 3), np.uint8)
    b = np.ones((6, 8, 4), np.float32)
    t = images_to_tensor([a, b])
    assert t.dtype == torch.float32 and tuple(t.shape) == (2, 6, 8, 3)
    assert t[0].max() == 0 and t[1].min() == 1
    assert tuple(images_to_tensor(a).shape) == (1, 6, 8, 3)
    np.testing.assert_array_equal(tensor_to_images(t), t.numpy())
    with pytest.raises(ValueError, match="one size"):
        images_to_tensor([a, np.zeros((5, 8, 3), np.uint8)])


def test_tensor_to_images_channels():
    grey = torch.rand(2, 4, 4, 1)
    out = tensor_to_images(grey)
    assert out.shape == (2, 4, 4, 3) and np.allclose(out[..., 2], grey[..., 0].numpy())
    rgba = torch.rand(1, 4, 4, 4)
    np.testing.assert_array_equal(tensor_to_images(rgba), rgba[..., :3].numpy())


@pytest.mark.parametrize("bad, words", [
    (np.zeros((1, 4, 4, 3), np.float32), "torch tensor"),
    (torch.zeros(4, 4, 3), "shape"),
    (torch.zeros(1, 4, 4, 2), "channels"),
    (torch.zeros(1, 4, 4, 3, dtype=torch.uint8), "dtype"),
    (torch.full((1, 4, 4, 3), 255.0), "0..1"),
    (torch.full((1, 4, 4, 3), float("nan")), "finite"),
    (torch.zeros(0, 4, 4, 3), "non-empty"),
])
def test_tensor_to_images_errors_name_the_input(bad, words):
    with pytest.raises(ValueError, match="source_image") as err:
        tensor_to_images(bad, what="source_image")
    assert words in str(err.value)


def test_masks():
    m = mask_to_tensor(np.array([[True, False]]))
    assert m.dtype == torch.float32 and tuple(m.shape) == (1, 1, 2) and m.tolist() == [[[1.0, 0.0]]]
    assert tuple(mask_to_tensor([np.zeros((3, 4)), np.ones((3, 4))]).shape) == (2, 3, 4)
    assert tensor_to_mask(torch.zeros(3, 4)).shape == (1, 3, 4)
    np.testing.assert_array_equal(tensor_to_mask(torch.ones(2, 3, 4)), np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="target_mask.*shape"):
        tensor_to_mask(torch.zeros(1, 3, 4, 1), what="target_mask")
    with pytest.raises(ValueError, match="target_mask.*MASK"):
        tensor_to_mask([[0.0]], what="target_mask")
