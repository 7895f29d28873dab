"""Grad-CAM and Finer-CAM against the grad-cam package and closed forms."""
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from audit.explain.cam import cam_from_gradients, finercam, gradcam, top_other_predictions
from audit.explain.gradients import contrast_coefficients, layer_gradients
from audit.explain.store import upsample
from audit.models.preprocess import to_model_input


def _batch(digits_small, meta, count=10):
    return to_model_input(digits_small.images[:count], meta.mean, meta.std)


def test_gradcam_agrees_with_grad_cam_package_with_a_target_per_image(trained, digits_small):
    model, meta = trained
    x = _batch(digits_small, meta)
    targets = torch.arange(len(x)) % len(meta.class_names)  # a different target for each image
    ours = upsample(gradcam(model, meta.layer, x, targets).numpy(), x.shape[-2:])
    with GradCAM(model=model, target_layers=[model.get_submodule(meta.layer)]) as oracle:
        theirs = oracle(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    compared = 0
    for mine, reference in zip(ours, theirs):
        if mine.std() == 0 and reference.std() == 0:
            continue  # both maps empty after the ReLU
        assert np.corrcoef(mine.ravel(), reference.ravel())[0, 1] >= 0.99
        compared += 1
    assert compared >= len(x) - 2, f"only {compared} non-empty maps"


def test_finercam_with_gamma_zero_is_gradcam(trained, digits_small):
    model, meta = trained
    x = _batch(digits_small, meta)
    targets = torch.as_tensor(digits_small.labels[: len(x)])
    contrasts = top_other_predictions(model(x).detach(), targets, 3)
    np.testing.assert_array_equal(finercam(model, meta.layer, x, targets, contrasts, gamma=0.0).numpy(), gradcam(model, meta.layer, x, targets).numpy())


def test_finercam_equals_relu_of_weight_difference(trained, digits_small):
    model, meta = trained
    x = _batch(digits_small, meta, count=6)
    targets = torch.as_tensor(digits_small.labels[:6])
    contrasts = top_other_predictions(model(x).detach(), targets, 3)
    gamma = 0.6
    finer = finercam(model, meta.layer, x, targets, contrasts, gamma)

    def class_weights(classes):
        coefficients = contrast_coefficients(len(meta.class_names), torch.as_tensor(classes), [[]] * len(classes), 0.0)
        activations, gradients, _ = layer_gradients(model, meta.layer, x, coefficients)
        return activations, gradients.mean(dim=(2, 3))

    activations, alpha_target = class_weights(targets.tolist())
    alpha_contrast = torch.stack([class_weights([c[t] for c in contrasts])[1] for t in range(3)]).mean(0)
    alpha = alpha_target - gamma * alpha_contrast
    expected = (alpha[:, :, None, None] * activations).sum(1).clamp_min(0)
    torch.testing.assert_close(finer, expected, rtol=1e-4, atol=1e-5)


def test_cam_from_gradients_closed_form():
    activations = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    gradients = torch.ones_like(activations) * torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    expected = activations[:, 0] - activations[:, 1] + 0.5 * activations[:, 2]
    torch.testing.assert_close(cam_from_gradients(activations, gradients, relu=False), expected)


def test_top_other_predictions_skip_the_target():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.05, 0.05], [0.6, 0.1, 0.1, 0.1, 0.1]])
    assert top_other_predictions(scores, torch.tensor([1, 2]), 2) == [[2, 0], [0, 1]]
