"""Layer grids registered to the image: an impulse in the image lands on the cell the registration says it does."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from audit.models.registration import GridRegistration, register_grid

SIZE, STEP = 64, 8


def test_plain_registration_is_half_pixel_bilinear_upsampling():
    maps = np.random.default_rng(0).random((3, 8, 6)).astype(np.float32)
    plain = GridRegistration.plain((8, 6), (64, 48))
    expected = F.interpolate(torch.from_numpy(maps)[:, None], size=(64, 48), mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(plain.upsample(maps, (64, 48)), expected, atol=1e-6)
    assert plain.offset() == (0.0, 0.0)


def _impulse_responses(model: torch.nn.Module, registration: GridRegistration) -> list[tuple[tuple[int, int], tuple[int, int], np.ndarray]]:
    """For each cell whose registered square fits the image: (cell, most-changed cell, the change map (h, w))."""
    store = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, output: store.__setitem__("A", output))
    base = torch.zeros(1, 3, SIZE, SIZE)
    with torch.no_grad():
        model(base)
        reference = store["A"].clone()
        out = []
        cells = reference.shape[-1]
        for i in range(cells):
            for j in range(cells):
                top = int(round(registration.origin[0] + i * STEP - STEP / 2))
                left = int(round(registration.origin[1] + j * STEP - STEP / 2))
                if min(top, left) < 0 or max(top, left) + STEP > SIZE:
                    continue
                x = base.clone()
                x[:, :, top : top + STEP, left : left + STEP] = 3.0
                model(x)
                change = (store["A"] - reference).abs().sum(1)[0].numpy()
                out.append(((i, j), np.unravel_index(int(change.argmax()), change.shape), change))
    handle.remove()
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_an_impulse_on_a_registered_cell_moves_that_cell_most(seed):
    """resnet10t at output_stride 8: plain half-pixel centres put a square one cell off; the registration corrects it."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet10t", num_classes=10, output_stride=8).eval()
    registration = register_grid(model, "layer4", (SIZE, SIZE))
    assert 0.5 * STEP < registration.offset()[0] < STEP and 0.5 * STEP < registration.offset()[1] < STEP
    responses = _impulse_responses(model, registration)
    assert len(responses) >= 36 and all(cell == tuple(hit) for cell, hit, _ in responses)
    plain = _impulse_responses(model, GridRegistration.plain((8, 8), (SIZE, SIZE)))
    assert sum(cell == tuple(hit) for cell, hit, _ in plain) <= len(plain) // 4  # the defect the registration fixes


def test_registered_upsampling_peaks_at_the_cells_registered_centre():
    registration = GridRegistration((10.25, 6.75), (8.0, 8.0))
    for i, j in ((2, 3), (4, 4), (5, 1)):
        one_hot = np.zeros((1, 8, 8), np.float32)
        one_hot[0, i, j] = 1.0
        drawn = registration.upsample(one_hot, (SIZE, SIZE))[0]
        peak = np.array(np.unravel_index(int(drawn.argmax()), drawn.shape)) + 0.5
        np.testing.assert_allclose(peak, np.array(registration.origin) + STEP * np.array([i, j]), atol=0.5)


def test_a_vit_patch_grid_needs_no_offset():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    registration = register_grid(vit, "blocks.1.norm1", (32, 32))
    assert registration == GridRegistration((4.0, 4.0), (8.0, 8.0)) and registration.offset() == (0.0, 0.0)
