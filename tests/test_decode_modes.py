"""Every image mode Pillow can open reaches the store as 8-bit RGB with its values scaled, never clipped; or is rejected with a reason."""
import numpy as np
import pytest
from PIL import Image

from audit.data.decode import RejectedImage, decode

RAMP = np.tile(np.linspace(0, 1, 16), (16, 1))  # left to right, 0 … 1


def _saved(tmp_path, image: Image.Image, suffix: str = ".tif") -> str:
    path = tmp_path / f"{image.mode.replace(';', '_')}{suffix}"
    image.save(path)
    return str(path)


@pytest.mark.parametrize(
    "mode, values, suffix",
    [
        ("L", np.rint(RAMP * 255).astype(np.uint8), ".png"),
        ("I;16", np.rint(RAMP * 65535).astype(np.uint16), ".png"),
        ("I;16", np.rint(RAMP * 64512).astype(np.uint16), ".tif"),  # the 0–64,512 image
        ("I", np.rint(RAMP * 65535).astype(np.int32), ".tif"),
        ("F", RAMP.astype(np.float32), ".tif"),
    ],
)
def test_greyscale_depths_scale_by_their_type_range(tmp_path, mode, values, suffix):
    image = Image.fromarray(values)
    assert image.mode == mode
    stored = decode(_saved(tmp_path, image, suffix), 16).image
    assert stored.dtype == np.uint8 and stored.shape == (3, 16, 16)
    full = {"L": 255, "F": 1}.get(mode, 65535)
    expected = np.rint(values.astype(np.float64) / full * 255)
    np.testing.assert_allclose(stored[0], expected, atol=1)  # not binarised: every level of the ramp survives
    assert len(np.unique(stored[0])) >= 15 and (stored[0] == stored[1]).all()


@pytest.mark.parametrize("mode", ["1", "P", "RGB", "RGBA", "CMYK", "LA"])
def test_eight_bit_modes_convert_as_pillow_does(tmp_path, mode):
    rgb = Image.fromarray(np.rint(np.stack([RAMP, RAMP[::-1], RAMP.T], axis=2) * 255).astype(np.uint8), "RGB")
    image = rgb.convert(mode)
    stored = decode(_saved(tmp_path, image, ".png" if mode not in ("CMYK",) else ".tif"), 16).image
    np.testing.assert_array_equal(stored, np.asarray(Image.open(_saved(tmp_path, image, ".png" if mode != "CMYK" else ".tif")).convert("RGB")).transpose(2, 0, 1))


def test_values_with_no_defined_scaling_are_rejected_with_the_reason(tmp_path):
    with pytest.raises(RejectedImage, match=r"float image with values in \[0, 3\], not \[0, 1\]"):
        decode(_saved(tmp_path, Image.fromarray((RAMP * 3).astype(np.float32))), 16)
    with pytest.raises(RejectedImage, match="beyond 16 bits"):
        decode(_saved(tmp_path, Image.fromarray((RAMP * 100000).astype(np.int32))), 16)


def test_a_sixteen_bit_mask_keeps_every_non_zero_pixel(tmp_path):
    mask = np.zeros((16, 16), np.uint16)
    mask[4:8, 4:8] = 1  # value 1 of 65535: a shift to 8 bits would lose it
    image = _saved(tmp_path, Image.fromarray(np.full((16, 16), 128, np.uint8)), ".png")
    decoded = decode(image, 16, mask_path=_saved(tmp_path, Image.fromarray(mask), ".png"))
    assert decoded.mask.sum() == 16 and decoded.mask[4:8, 4:8].all()
