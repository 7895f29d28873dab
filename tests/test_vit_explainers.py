"""ViT explainers: token grids with CLS and register tokens, CDAM against direct autograd, attention, Grad-CAM vs grad-cam."""
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from audit.explain.cdam import attention_map, integrated_cdam, smooth_cdam
from audit.explain.compute import model_maps
from audit.settings import ExplainSettings
from audit.explain.engine import ExplainerEngine
from audit.models.registration import GridRegistration
from audit.models.checkpoint import ModelMeta
from audit.models.imported import resolve_layer

SIZE = (16, 24)  # a non-square input: a 4 × 6 patch grid
LAYER = "blocks.1.norm1"


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=SIZE, patch_size=4, embed_dim=32, depth=2, num_heads=2, reg_tokens=2
    ).eval()
    meta = ModelMeta("vit_tiny_patch16_224", {}, [f"c{i}" for i in range(5)], (3, *SIZE), (0.5,) * 3, (0.5,) * 3, LAYER)
    images = np.random.default_rng(0).integers(0, 256, size=(6, 3, *SIZE), dtype=np.uint8)
    return model, meta, images


def _x(meta, images):
    from audit.models.preprocess import to_model_input

    return to_model_input(images, meta.mean, meta.std)


def _direct_token_gradients(model, x, objective):
    """Tokens at the layer and ∂objective/∂tokens by plain autograd through the whole model (no substitution)."""
    store = {}
    handle = model.get_submodule(LAYER).register_forward_hook(lambda _m, _i, out: store.setdefault("T", out))
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        logits = model(x)
        (gradients,) = torch.autograd.grad(objective(model, logits).sum(), store["T"])
    handle.remove()
    return store["T"].detach(), gradients


def _plan(methods, targets, reference=""):
    return pd.DataFrame(
        [{"method": m, "image_index": i, "target": int(t), "contrasts": [], "reference": reference} for m in methods for i, t in enumerate(targets)]
    )


def test_auto_layer_and_token_grid(vit):
    model, meta, images = vit
    assert resolve_layer(model, "auto") == "blocks.1.norm1"
    engine = ExplainerEngine(model, LAYER, SIZE)
    assert engine.layout.prefix == 3 and engine.layout.grid == (4, 6)  # CLS + 2 registers, non-square grid
    layer_pass = engine.layer_pass(_x(meta, images), gradients=False)
    assert layer_pass.activations.shape == (6, 32, 4, 6)
    # Patch (row 1, column 2) is token 3 + 1·6 + 2.
    torch.testing.assert_close(layer_pass.activations[:, :, 1, 2], layer_pass.tokens[:, 3 + 6 + 2])


def test_cdam_class_and_concept_equal_direct_autograd(vit):
    model, meta, images = vit
    targets = np.array([0, 1, 2, 3, 4, 0])
    engine = ExplainerEngine(model, LAYER, SIZE)
    got = np.stack(model_maps(engine, meta, images, _plan(["cdam"], targets), ExplainSettings(batch_size=6)))
    tokens, gradients = _direct_token_gradients(model, _x(meta, images), lambda _m, logits: logits[torch.arange(6), torch.as_tensor(targets)])
    expected = (tokens * gradients).sum(-1)[:, 3:].reshape(6, 4, 6)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert (got < 0).any() and (got > 0).any()  # signed

    concept = np.random.default_rng(1).normal(size=32)
    got = np.stack(model_maps(engine, meta, images, _plan(["cdam_concept"], targets, "concept:x"), ExplainSettings(batch_size=6), {"concept:x": concept}))
    store = {}
    handle = model.get_classifier().register_forward_pre_hook(lambda _m, inputs: store.setdefault("z", inputs[0]))
    tokens, gradients = _direct_token_gradients(model, _x(meta, images), lambda _m, _logits: store["z"] @ torch.as_tensor(concept, dtype=torch.float32))
    handle.remove()
    np.testing.assert_allclose(got, (tokens * gradients).sum(-1)[:, 3:].reshape(6, 4, 6).numpy(), rtol=1e-4, atol=1e-6)


def test_integrated_cdam_is_complete(vit):
    model, meta, images = vit
    x = _x(meta, images)
    engine = ExplainerEngine(model, LAYER, SIZE)
    tokens = engine.layer_pass(x, gradients=False).tokens
    coefficients = torch.eye(5)[[0, 1, 2, 3, 4, 0]]
    maps = integrated_cdam(engine, x, tokens, coefficients, "logits", steps=64)

    def logit_with(patch_scale):
        def hook(_m, _i, out):
            out = out.clone()
            out[:, 3:] *= patch_scale
            return out

        handle = model.get_submodule(LAYER).register_forward_hook(hook)
        with torch.no_grad():
            value = (model(x) * coefficients).sum(1)
        handle.remove()
        return value

    difference = logit_with(1.0) - logit_with(0.0)
    np.testing.assert_allclose(maps.sum(dim=(1, 2)).numpy(), difference.numpy(), rtol=0.02, atol=0.01 * float(difference.abs().max()))


def test_smooth_cdam_without_noise_is_cdam(vit):
    model, meta, images = vit
    x = _x(meta, images)
    engine = ExplainerEngine(model, LAYER, SIZE)
    layer_pass = engine.layer_pass(x, gradients=True)
    coefficients = torch.eye(5)[[1, 1, 2, 3, 4, 0]]
    plain = (layer_pass.activations * layer_pass.gradients(torch.arange(6), coefficients)).sum(1)
    keys = np.arange(6)
    smooth = smooth_cdam(engine, x, layer_pass.tokens, coefficients, "logits", samples=3, noise=0.0, keys=keys)
    torch.testing.assert_close(smooth, plain, rtol=1e-4, atol=1e-6)
    noisy = smooth_cdam(engine, x, layer_pass.tokens, coefficients, "logits", samples=3, noise=0.05, keys=keys)
    assert not torch.allclose(noisy, plain)


def test_smooth_cdam_maps_do_not_depend_on_the_batch_size(vit):
    """``explain.batch_size`` is speed only: each row's noise comes from its plan row and sample, not from the rows
    drawn before it, so batches of 1, 4 and 6 images give the same maps (they used to differ by up to 20 %)."""
    from audit.explain.compute import model_maps
    from audit.settings import ExplainSettings

    model, meta, images = vit
    engine = ExplainerEngine(model, LAYER, SIZE)
    plan = _plan(["cdam_smooth"], [1, 2, 3, 4, 0, 1])
    maps = [np.stack(model_maps(engine, meta, images, plan, ExplainSettings(batch_size=size, smooth_samples=3))) for size in (1, 4, 6)]
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=1e-4, atol=1e-6 * np.abs(maps[0]).max())


def test_attention_map_equals_the_attention_weights(vit):
    model, meta, images = vit
    x = _x(meta, images)
    engine = ExplainerEngine(model, LAYER, SIZE)
    got = attention_map(engine, x)
    attention = model.blocks[-1].attn
    store = {}
    attention.fused_attn = False  # the unfused path passes the weights through attn_drop
    handle = attention.attn_drop.register_forward_hook(lambda _m, inputs, _o: store.setdefault("w", inputs[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        attention.fused_attn = True
    expected = store["w"][:, :, 0, 3:].mean(1).reshape(6, 4, 6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.sum(dim=(1, 2)) <= 1.0 + 1e-6, torch.ones(6, dtype=torch.bool))


def test_vit_gradcam_agrees_with_grad_cam_package(vit):
    model, meta, images = vit
    targets = np.array([0, 1, 2, 3, 4, 2])
    engine = ExplainerEngine(model, LAYER, SIZE)
    layer_maps = np.stack(model_maps(engine, meta, images, _plan(["gradcam"], targets), ExplainSettings(batch_size=6)))
    ours = GridRegistration.plain(layer_maps.shape[1:], tuple(SIZE)).upsample(layer_maps, tuple(SIZE))  # the package's half-pixel centres
    assert engine.closed_form is False
    model.requires_grad_(True)
    with GradCAM(model=model, target_layers=[model.get_submodule(LAYER)], reshape_transform=engine.layout.to_spatial) as oracle:
        theirs = oracle(input_tensor=_x(meta, images), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.requires_grad_(False)
    for mine, reference in zip(ours, theirs):
        if mine.std() > 1e-7 or reference.std() > 1e-7:
            assert np.corrcoef(mine.ravel(), reference.ravel())[0, 1] >= 0.99


@pytest.mark.parametrize("name", ["cdam", "cdam_smooth", "cdam_integrated", "cdam_concept", "attention", "gradcam"])
def test_a_vit_method_reads_no_setting_beyond_what_it_declares(vit, name):
    """With settings holding only the method's declared parameters and the job's keys (others raise when read), the
    maps equal those computed with every setting given (non-default values, so that reading a default would show)."""
    from audit.explain.registry import explainer
    from audit.settings import JOB_KEYS

    model, meta, images = vit
    targets = np.array([0, 1, 2, 3, 4, 0])
    plan = _plan([name], targets, "concept:x" if name == "cdam_concept" else "")
    concepts = {"concept:x": np.random.default_rng(1).normal(size=32)}
    section = {**ExplainSettings.defaults(), "smooth_samples": 3, "smooth_noise": 0.1, "integrated_steps": 5, "methods": [name]}
    passed = ExplainSettings.output_values(section, set(JOB_KEYS) | set(explainer(name).parameters))
    partial = ExplainSettings.from_config(passed, speed={"batch_size": 6}, partial=True)
    engine = ExplainerEngine(model, LAYER, SIZE)
    got = np.stack(model_maps(engine, meta, images, plan, partial, concepts))
    expected = np.stack(model_maps(engine, meta, images, plan, ExplainSettings.from_config(section | {"batch_size": 6}), concepts))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
