"""The explainer engine against the grad-cam package, closed forms and direct autograd."""
import numpy as np
import pandas as pd
import pytest
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from audit.explain.compute import model_maps
from audit.settings import ExplainSettings
from audit.explain.diffcam import diffcam_weights
from audit.explain.engine import ExplainerEngine
from audit.explain.objectives import objective_coefficients
from audit.features import forward_features
from audit.models.registration import GridRegistration
from audit.models.preprocess import to_model_input
from audit.reference_groups.gaussian import ShrunkGaussian

PACKAGE_CLASSES = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "scorecam": "ScoreCAM",
}


def _plan(methods, targets, contrasts=None):
    rows = []
    for name in methods:
        for i, t in enumerate(targets):
            contrasting = contrasts is not None and name.startswith("finercam")
            rows.append({"method": name, "image_index": i, "target": int(t), "contrasts": list(contrasts[i]) if contrasting else [], "reference": ""})
    return pd.DataFrame(rows)


def _minmax(maps):
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return (maps - low) / np.where(span > 0, span, 1)


def _assert_agrees(ours, theirs, minimum=0.99):
    compared = 0
    for mine, reference in zip(ours, theirs):
        if mine.std() < 1e-7 and reference.std() < 1e-7:
            continue  # both empty after the ReLU
        assert np.corrcoef(mine.ravel(), reference.ravel())[0, 1] >= minimum
        compared += 1
    assert compared >= len(ours) // 2, f"only {compared} non-empty maps"


@pytest.mark.parametrize("layer", ["layer4", "layer3"])  # closed-form head, autograd head side
@pytest.mark.parametrize("name", list(PACKAGE_CLASSES))
def test_agrees_with_grad_cam_package_with_a_target_per_image(trained, digits_small, name, layer):
    model, meta = trained
    count = 4 if name == "scorecam" else 10
    images = digits_small.images[:count]
    targets = np.where(np.arange(count) % 2 == 0, digits_small.labels[:count], np.arange(count) % 10)  # own class or another
    engine = ExplainerEngine(model, layer, images.shape[-2:])
    meta_layer = type(meta)(**{**meta.__dict__, "layer": layer})
    ours = model_maps(engine, meta_layer, images, _plan([name], targets), ExplainSettings(finer_gamma=0.0, batch_size=4))
    x = to_model_input(images, meta.mean, meta.std)
    model.requires_grad_(True)
    cam_class = getattr(pytorch_grad_cam, PACKAGE_CLASSES[name])
    with cam_class(model=model, target_layers=[model.get_submodule(layer)]) as oracle:
        theirs = oracle(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.requires_grad_(False)
    _assert_agrees(_plain_upsample(np.stack(ours), x.shape[-2:]), theirs)
    assert engine.closed_form is (layer == "layer4" if name != "scorecam" else None)


def test_closed_form_equals_autograd_head_side(trained, digits_small):
    model, meta = trained
    x = to_model_input(digits_small.images[:6], meta.mean, meta.std)
    engine = ExplainerEngine(model, "layer4", x.shape[-2:])
    autograd = engine.layer_pass(x, gradients=True)  # first pass: autograd, then the check
    assert engine.closed_form
    closed = engine.layer_pass(x, gradients=True)
    positions = torch.tensor([0, 1, 2, 3, 4, 5, 0, 0])
    coefficients = torch.randn(8, len(meta.class_names), generator=torch.Generator().manual_seed(1))
    expected = autograd.gradients(positions, coefficients)
    got = closed.gradients(positions, coefficients)
    assert got.shape == (8, 512, 1, 1)  # constant over the grid: never materialised
    torch.testing.assert_close(got.expand_as(expected), expected, rtol=1e-4, atol=1e-6)


def test_batched_vjp_equals_one_backward_per_objective(trained, digits_small):
    model, meta = trained
    x = to_model_input(digits_small.images[:3], meta.mean, meta.std)
    engine = ExplainerEngine(model, "layer3", x.shape[-2:])
    layer_pass = engine.layer_pass(x, gradients=True)
    positions = torch.tensor([0, 0, 0, 1, 2, 2])
    classes = [1, 4, 1, 7, 0, 9]  # a duplicate row for image 0
    got = layer_pass.gradients(positions, torch.eye(len(meta.class_names))[classes])
    for r, (p, c) in enumerate(zip(positions.tolist(), classes)):
        store = {}
        handle = model.get_submodule("layer3").register_forward_hook(lambda _m, _i, out: store.setdefault("A", out.detach().requires_grad_(True)))
        logits = model(x[p : p + 1])
        handle.remove()
        (expected,) = torch.autograd.grad(logits[0, c], store["A"])
        torch.testing.assert_close(got[r], expected[0], rtol=1e-4, atol=1e-6)


def test_finercam_with_gamma_zero_is_gradcam(trained, digits_small):
    model, meta = trained
    images = digits_small.images[:8]
    targets = digits_small.labels[:8]
    contrasts = [[(t + 1) % 10, (t + 2) % 10, (t + 3) % 10] for t in targets]
    engine = ExplainerEngine(model, meta.layer, images.shape[-2:])
    passes = []
    for closed_form_before in (None, True):  # the first pass takes autograd gradients (and finds the head pool + linear), the second the closed form
        assert engine.closed_form is closed_form_before
        maps = np.stack(model_maps(engine, meta, images, _plan(["finercam", "gradcam"], targets, contrasts), ExplainSettings(finer_gamma=0.0, batch_size=8)))
        np.testing.assert_array_equal(maps[:8], maps[8:])
        passes.append(maps)
    np.testing.assert_allclose(passes[1], passes[0], rtol=1e-4, atol=1e-5 * np.abs(passes[0]).max())  # closed form = autograd


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_finercam_is_relu_of_the_weight_difference(trained, digits_small, layer):
    model, meta = trained
    images = digits_small.images[:6]
    targets = digits_small.labels[:6]
    contrasts = [[(t + 1) % 10, (t + 4) % 10] for t in targets]
    meta_layer = type(meta)(**{**meta.__dict__, "layer": layer})
    engine = ExplainerEngine(model, layer, images.shape[-2:])
    gamma = 0.6
    finer = np.stack(model_maps(engine, meta_layer, images, _plan(["finercam"], targets, contrasts), ExplainSettings(finer_gamma=gamma, batch_size=6)))
    x = to_model_input(images, meta.mean, meta.std)
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: store.setdefault("A", out.detach().requires_grad_(True)))
    logits = model(x)
    handle.remove()
    activations = store["A"]

    def alpha(classes):
        (g,) = torch.autograd.grad(logits[torch.arange(6), torch.as_tensor(classes)].sum(), activations, retain_graph=True)
        return g.mean(dim=(2, 3))

    weights = alpha(targets) - gamma * (alpha([c[0] for c in contrasts]) + alpha([c[1] for c in contrasts])) / 2
    expected = torch.einsum("bk,bkhw->bhw", weights, activations.detach()).clamp_min(0)
    np.testing.assert_allclose(finer, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_score_finercam_weights_the_contrast_objective(trained, digits_small):
    model, meta = trained
    images = digits_small.images[:2]
    targets = digits_small.labels[:2]
    contrasts = [[(t + 1) % 10] for t in targets]
    engine = ExplainerEngine(model, meta.layer, images.shape[-2:])
    got = np.stack(model_maps(engine, meta, images, _plan(["finercam_score"], targets, contrasts), ExplainSettings(finer_gamma=1.0, batch_size=2)))
    # the oracle, written out without the engine: the layer's channels (features.py's capture), each upsampled
    # (bilinear), min-max normalised and multiplied into the normalised input, one forward per channel
    activations = torch.from_numpy(forward_features(model, meta, torch.from_numpy(images))[0])
    x = to_model_input(images, meta.mean, meta.std)
    masks = torch.nn.functional.interpolate(activations, size=x.shape[-2:], mode="bilinear", align_corners=False)
    low, high = masks.amin(dim=(2, 3), keepdim=True), masks.amax(dim=(2, 3), keepdim=True)
    masks = (masks - low) / (high - low + 1e-8)
    with torch.no_grad():
        masked = torch.stack([model.eval()(x[b] * masks[b, :, None]) for b in range(2)])  # (B, K, C)
    objective = masked[torch.arange(2), :, torch.as_tensor(targets)] - masked[torch.arange(2), :, torch.as_tensor([c[0] for c in contrasts])]
    expected = torch.einsum("bk,bkhw->bhw", torch.softmax(objective, 1), activations).clamp_min(0)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_input_gradient_is_the_pixel_gradient(trained, digits_small):
    model, meta = trained
    images = digits_small.images[:4]
    targets = np.array([3, 1, 4, 1])
    engine = ExplainerEngine(model, meta.layer, images.shape[-2:])
    got = np.stack(model_maps(engine, meta, images, _plan(["inputgrad"], targets), ExplainSettings(finer_gamma=0.0, batch_size=4)))
    x = to_model_input(images, meta.mean, meta.std).requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(model(x)[torch.arange(4), torch.as_tensor(targets)].sum(), x)
    np.testing.assert_allclose(got, g.abs().amax(1).numpy(), rtol=1e-4, atol=1e-7)


def test_package_adapter_runs_a_grad_cam_class_by_name(trained, digits_small):
    model, meta = trained
    images = digits_small.images[:5]
    targets = np.array([0, 1, 2, 3, 4])
    engine = ExplainerEngine(model, meta.layer, images.shape[-2:])
    got = np.stack(model_maps(engine, meta, images, _plan(["package-EigenGradCAM"], targets), ExplainSettings(finer_gamma=0.0, batch_size=5)))
    x = to_model_input(images, meta.mean, meta.std)
    model.requires_grad_(True)
    with pytorch_grad_cam.EigenGradCAM(model=model, target_layers=[model.get_submodule(meta.layer)]) as oracle:
        expected = oracle(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.requires_grad_(False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert all(p.requires_grad is False for p in engine.model.parameters())  # the package's backward left the engine's copy frozen
    with pytest.raises(ValueError, match="NoSuchCAM"):
        model_maps(engine, meta, images, _plan(["package-NoSuchCAM"], targets), ExplainSettings(finer_gamma=0.0, batch_size=5))


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_eigencam_agrees_with_the_grad_cam_package_up_to_the_svd_sign(trained, digits_small, layer):
    """Our projection equals the package's get_2d_projection up to its arbitrary sign, and ours agrees with the channel
    mean; the package's EigenCAM maps are the ReLU of the projection with the package's sign, after its normalisation."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from audit.explain.eigencam import eigen_projection
    from audit.models.layers import capture_layer

    model, meta = trained
    images = digits_small.images[:10]
    x = to_model_input(images, meta.mean, meta.std)
    with torch.no_grad(), capture_layer(model, layer) as captured:
        model(x)
    activations = captured["A"]
    ours = eigen_projection(activations).numpy()
    theirs = get_2d_projection(activations.numpy().copy())
    signs = np.sign((ours * theirs).sum(axis=(1, 2)))
    np.testing.assert_allclose(ours, signs[:, None, None] * theirs, rtol=1e-3, atol=1e-4 * np.abs(theirs).max())
    mean_map = activations.mean(1).numpy()
    agreement = [np.corrcoef(o.ravel(), m.ravel())[0, 1] for o, m in zip(ours, mean_map)]
    assert min(agreement) >= 0
    engine = ExplainerEngine(model, layer, images.shape[-2:])
    meta_layer = type(meta)(**{**meta.__dict__, "layer": layer})
    maps = np.stack(model_maps(engine, meta_layer, images, _plan(["eigencam"], digits_small.labels[:10]), ExplainSettings(batch_size=4)))
    np.testing.assert_allclose(maps, np.clip(ours, 0, None), rtol=1e-4, atol=1e-5)
    model.requires_grad_(True)
    with pytorch_grad_cam.EigenCAM(model=model, target_layers=[model.get_submodule(layer)]) as oracle:
        package = oracle(input_tensor=x, targets=None)
    model.requires_grad_(False)
    _assert_agrees(_plain_upsample(np.clip(signs[:, None, None] * ours, 0, None), x.shape[-2:]), package)


def test_the_engine_leaves_the_callers_model_as_it_was(trained, digits_small):
    model, meta = trained
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    formats = [p.is_contiguous() for p in model.parameters()]
    try:
        engine = ExplainerEngine(model, meta.layer, digits_small.images.shape[-2:])
        model_maps(engine, meta, digits_small.images[:4], _plan(["gradcam", "scorecam"], digits_small.labels[:4]), ExplainSettings(batch_size=4))
        assert model.training and [p.requires_grad for p in model.parameters()] == flags
        assert [p.is_contiguous() for p in model.parameters()] == formats
        assert not engine.model.training and engine.channels_last
    finally:
        model.eval()


def test_maps_change_when_the_head_is_randomised(trained, digits_small):
    model, meta = trained
    images = digits_small.images[:8]
    targets = digits_small.labels[:8]
    plan = _plan(["gradcam", "layercam"], targets)
    before = np.stack(model_maps(ExplainerEngine(model, meta.layer, images.shape[-2:]), meta, images, plan, ExplainSettings(finer_gamma=0.0, batch_size=8)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        torch.manual_seed(3)
        nn.init.normal_(model.get_classifier().weight)
        after = np.stack(model_maps(ExplainerEngine(model, meta.layer, images.shape[-2:]), meta, images, plan, ExplainSettings(finer_gamma=0.0, batch_size=8)))
    finally:
        model.load_state_dict(state)
    correlations = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(before, after) if a.std() > 0 and b.std() > 0]
    assert np.median(correlations) < 0.5


def test_diffcam_equals_finercam_weights_on_the_lda_head_of_the_same_class_means(rng):
    """A linear head with rows W_c = S⁻¹ μ_c: Finer-CAM (γ = 1, contrast d) of a target at μ_c has α = S⁻¹(μ_c − μ_d)/hw,
    which is DiffCAM's w* for z = μ_c against class d, divided by hw."""
    channels, classes, side = 6, 3, 3
    means = rng.normal(size=(classes, channels))
    root = rng.normal(size=(channels, channels))
    covariance = root @ root.T + channels * np.eye(channels)
    cholesky = np.linalg.cholesky(covariance)
    trunk = nn.Conv2d(3, channels, 1, dtype=torch.float64)
    head = nn.Linear(channels, classes, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(np.linalg.solve(covariance, means.T).T))
        head.bias.zero_()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.head = trunk, head

        def get_classifier(self):
            return self.head

        def forward(self, x):
            return self.head(self.trunk(x).mean(dim=(2, 3)))

    engine = ExplainerEngine(Model(), "trunk", (side, side))
    layer_pass = engine.layer_pass(torch.as_tensor(rng.normal(size=(2, 3, side, side))), gradients=True)
    c, d = 0, 2
    alpha = layer_pass.gradients(torch.tensor([0]), objective_coefficients(classes, [c], [[d]], gamma=1.0).double()).mean(dim=(2, 3))[0]
    group = ShrunkGaussian(mean=means[d], cholesky=cholesky, shrinkage=0.0, count=100.0)
    np.testing.assert_allclose(alpha.numpy() * side * side, diffcam_weights(means[c], group)[0], rtol=1e-8)


def _plain_upsample(maps, size):
    """Layer maps (M, h, w) on the image as the grad-cam package draws them: bilinear, half-pixel cell centres."""
    return GridRegistration.plain(maps.shape[1:], tuple(size)).upsample(maps, tuple(size))


def test_a_batch_out_of_gpu_memory_is_split_and_gives_the_same_maps(trained, digits_small, monkeypatch, caplog):
    """Out of GPU memory on more than two images (simulated: the CPU has none to run out of): the batch of 8 is split
    down to twos and retried, the maps equal a run that never ran out; one image that still runs out raises."""
    model, meta = trained
    images, targets = digits_small.images[:8], digits_small.labels[:8]
    contrasts = [[(t + 1) % 10] for t in targets]
    plan = _plan(["gradcam", "finercam", "scorecam"], targets, contrasts)
    expected = np.stack(model_maps(ExplainerEngine(model, meta.layer, images.shape[-2:]), meta, images, plan, ExplainSettings(batch_size=8)))
    layer_pass = ExplainerEngine.layer_pass

    def scarce(self, x, gradients):
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return layer_pass(self, x, gradients)

    monkeypatch.setattr(ExplainerEngine, "layer_pass", scarce)
    got = np.stack(model_maps(ExplainerEngine(model, meta.layer, images.shape[-2:]), meta, images, plan, ExplainSettings(batch_size=8)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert [r.getMessage() for r in caplog.records if "out of GPU memory" in r.getMessage()][:2] == [
        "out of GPU memory explaining 8 images: retrying as two batches of 4 and 4", "out of GPU memory explaining 4 images: retrying as two batches of 2 and 2",
    ]
    monkeypatch.setattr(ExplainerEngine, "layer_pass", lambda self, x, gradients: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("simulated")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        model_maps(ExplainerEngine(model, meta.layer, images.shape[-2:]), meta, images, plan, ExplainSettings(batch_size=8))


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "finercam", "finercam_score", "inputgrad", "eigencam"])
def test_a_method_reads_no_setting_beyond_what_it_declares(trained, digits_small, name):
    """An explain job passes each method's declared parameters and the job's own keys, nothing else: with settings
    holding only those (others raise when read), the method's maps are those computed with every setting given
    (a γ other than the default included, so that reading a default would show)."""
    from audit.explain.registry import explainer
    from audit.settings import JOB_KEYS

    model, meta = trained
    images, targets = digits_small.images[:4], digits_small.labels[:4]
    plan = _plan([name], targets, [[(t + 1) % 10] for t in targets])
    section = {**ExplainSettings.defaults(), "finer_gamma": 0.3, "methods": [name]}
    passed = ExplainSettings.output_values(section, set(JOB_KEYS) | set(explainer(name).parameters))
    partial = ExplainSettings.from_config(passed, speed={"batch_size": 4, "score_batch": 64}, partial=True)
    engine = ExplainerEngine(model, meta.layer, images.shape[-2:])
    got = np.stack(model_maps(engine, meta, images, plan, partial))
    expected = np.stack(model_maps(engine, meta, images, plan, ExplainSettings.from_config(section | {"batch_size": 4})))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
