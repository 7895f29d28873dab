"""Explainer benchmark: our engine against the grad-cam package and the physical bounds.

Run from the repository root inside the venv (each case runs in a fresh
process, so its peak resident memory is its own):

    python benchmarks/explainers.py --images 128 --size 64 --batch 64

Same random images, same model (timm resnet10t, output_stride 8: layer4 is
512×8×8 at 64 px, layer3 256×8×8), same layer, one run. Cases:

* ``forward``: plain forward; ``forward_cl``: the same in channels-last memory
  format, as our engine runs CNNs; ``forward_grad``: forward + autograd gradient of
  one logit per image to the layer (the bound for single-target Grad-CAM).
* ``ours_gradcam``: our single-target Grad-CAM; ``package_gradcam``: the package's.
* ``ours_4x4`` / ``package_4x4``: Grad-CAM, Grad-CAM++, LayerCAM and Finer-CAM
  (γ = 0.6 against the next three classes), four targets per image; the package
  runs one call per method and target (its Finer-CAM as GradCAM with
  ``FinerWeightedTarget``).
* ``ours_scorecam`` / ``package_scorecam``: single-target Score-CAM (4 images);
  ``…_scorecam4``: four targets per image (ours shares the masked forwards).
* ``diffcam``: DiffCAM maps of every image from stored 512×8×8 activations and embeddings (the dataset maps' path),
  against all other classes and against the own class without the image, beside one plain read of the activations
  (the memory bound).

The layer3 variants exercise the batched head-side VJP (no closed form).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cases import exit_if_any_failed, print_case, run_cases, synchronize  # benchmarks/cases.py (run from the repository root: python benchmarks/...)

CASES = [
    "forward", "forward_cl", "forward_grad", "ours_gradcam", "package_gradcam", "ours_4x4", "package_4x4",
    "forward_grad@layer3", "ours_gradcam@layer3", "ours_4x4@layer3", "package_4x4@layer3",
    "ours_scorecam", "package_scorecam", "ours_scorecam4", "package_scorecam4", "diffcam",
]
FOUR = ["gradcam", "gradcampp", "layercam", "finercam"]
PACKAGE_NAMES = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "layercam": "LayerCAM", "scorecam": "ScoreCAM"}


def _setup(size: int, layer: str, device: str):
    from audit.models.checkpoint import ModelMeta, build_model

    torch.manual_seed(0)
    meta = ModelMeta("resnet10t", {"output_stride": 8}, [f"c{i}" for i in range(10)], (3, size, size), (0.5,) * 3, (0.25,) * 3, layer)
    model = build_model(meta).eval().to(device)
    return model, meta


def _plan(methods: list[str], images: int, targets: int):
    import pandas as pd

    rows = []
    for i in range(images):
        for t in range(targets):
            c = (i + t) % 10
            for m in methods:
                contrasts = [(c + k) % 10 for k in (1, 2, 3)] if m.startswith("finercam") else []
                rows.append({"method": m, "image_index": i, "target": c, "contrasts": contrasts, "reference": ""})
    return pd.DataFrame(rows)


def run_case(case: str, images: int, size: int, batch: int, device: str) -> dict:
    """Throughput (images/s, or maps/s for diffcam) and peak memory of one case."""
    from audit.explain.compute import model_maps
    from audit.explain.engine import ExplainerEngine
    from audit.models.preprocess import to_model_input
    from audit.runtime import reproducible_cuda
    from audit.settings import ExplainSettings

    name, _, layer = case.partition("@")
    layer = layer or "layer4"
    if name == "diffcam":
        return _diffcam(images * 64)
    count = min(images, 4) if "scorecam" in name else images
    pixels = np.random.default_rng(0).integers(0, 256, size=(count, 3, size, size), dtype=np.uint8)
    if device.startswith("cuda"):
        reproducible_cuda()  # as every CUDA job runs: deterministic kernels, no TF32 (the package's cases too)
    model, meta = _setup(size, layer, device)
    module = model.get_submodule(layer)
    batches = [to_model_input(pixels[s : s + batch], meta.mean, meta.std, device) for s in range(0, count, batch)]
    targets = [torch.arange(len(x), device=device) % 10 for x in batches]

    def forward():
        with torch.no_grad():
            for x in batches:
                model(x)

    def forward_channels_last():
        model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            for x in batches:
                model(x.contiguous(memory_format=torch.channels_last))

    def forward_grad():
        store = {}
        handle = module.register_forward_hook(lambda _m, _i, out: store.__setitem__("A", out))
        for x, t in zip(batches, targets):
            with torch.enable_grad():
                logits = model(x.requires_grad_(False))
                torch.autograd.grad(logits[torch.arange(len(x)), t].sum(), store["A"])
        handle.remove()

    def ours(methods: list[str], per_image: int):
        plan = _plan(methods, count, per_image)
        engine = ExplainerEngine(model, layer, (size, size))
        model_maps(engine, meta, pixels, plan, ExplainSettings(finer_gamma=0.6, batch_size=batch))

    def package(methods: list[str], per_image: int):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

        model.requires_grad_(True)
        for method in methods:
            cam_class = getattr(pytorch_grad_cam, PACKAGE_NAMES.get(method, "GradCAM"))
            with cam_class(model=model, target_layers=[module]) as cam:
                for s, x in enumerate(batches):
                    for t in range(per_image):
                        classes = [(s * batch + i + t) % 10 for i in range(len(x))]
                        if method == "finercam":
                            wanted = [FinerWeightedTarget(c, [(c + k) % 10 for k in (1, 2, 3)], 0.6) for c in classes]
                        else:
                            wanted = [ClassifierOutputTarget(c) for c in classes]
                        cam(input_tensor=x, targets=wanted)
        model.requires_grad_(False)

    work = {
        "forward": forward,
        "forward_cl": forward_channels_last,
        "forward_grad": forward_grad,
        "ours_gradcam": lambda: ours(["gradcam"], 1),
        "package_gradcam": lambda: package(["gradcam"], 1),
        "ours_4x4": lambda: ours(FOUR, 4),
        "package_4x4": lambda: package(FOUR, 4),
        "ours_scorecam": lambda: ours(["scorecam"], 1),
        "package_scorecam": lambda: package(["scorecam"], 1),
        "ours_scorecam4": lambda: ours(["scorecam"], 4),
        "package_scorecam4": lambda: package(["scorecam"], 4),
    }[name]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if "scorecam" not in name:  # Score-CAM runs thousands of forwards: long enough without a warm-up
        work()
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    seconds = time.perf_counter() - started
    result = {"case": case, "images": count, "seconds": round(seconds, 3), "images_per_s": round(count / seconds, 2)}
    if device.startswith("cuda"):
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _diffcam(maps: int, read_size: int = 4096) -> dict:
    """DiffCAM maps of every image from stored 512×8×8 float32 activations and their stored embeddings, through the
    dataset maps' path (``shard_maps``: the weights from the embeddings, then one batched channel sum per read of
    ``read_size`` images), against all other classes and against the own class without the image (leave-one-out),
    beside one plain read of the same activations (a torch sum over them: the memory bound)."""
    import tempfile

    import dask.array as da
    import pandas as pd
    import xarray as xr

    from audit.explain.dataset_maps import shard_maps
    from audit.explain.registry import explainer
    from audit.explain.weighting import direction_maps
    from audit.reference_groups.store import open_reference, write_reference_store
    from audit.settings import ExplainSettings

    rng = np.random.default_rng(0)
    classes = 10
    labels = np.arange(maps) % classes
    activations = rng.random((maps, 512, 8, 8), dtype=np.float32) + labels[:, None, None, None].astype(np.float32) / classes
    embedding = activations.mean(axis=(2, 3), dtype=np.float64)
    features = xr.Dataset({"activation": (("image", "unit", "y", "x"), activations), "embedding": (("image", "unit"), embedding)})

    def plan(kind: str) -> pd.DataFrame:
        return pd.DataFrame({"method": "diffcam", "image_index": np.arange(maps), "target": labels, "contrasts": [[]] * maps,
                             "reference": [f"{kind}:{c}" for c in labels]})

    def read() -> None:
        for s in range(0, maps, read_size):
            torch.from_numpy(activations[s : s + read_size]).sum()

    with tempfile.TemporaryDirectory() as scratch:
        write_reference_store(da.from_array(embedding, chunks=(4096, 512)), labels, [str(c) for c in range(classes)], f"{scratch}/reference.zarr")
        reference = open_reference(f"{scratch}/reference.zarr")
        settings = ExplainSettings()
        diffcam = explainer("diffcam")
        others, loo = plan("others"), plan("own-class-loo")
        square = torch.from_numpy(rng.random((512, 512), dtype=np.float32))
        weights, offsets = diffcam.stored_directions(embedding, reference, others, settings)
        work = {
            "read": read,
            "others": lambda: shard_maps(others, features, reference, settings, read_size),
            "own-class-loo": lambda: shard_maps(loo, features, reference, settings, read_size),
            "others_weights": lambda: diffcam.stored_directions(embedding, reference, others, settings),
            "loo_weights": lambda: diffcam.stored_directions(embedding, reference, loo, settings),
            "channel_sums": lambda: [direction_maps(activations[s : s + read_size], weights[s : s + read_size], offsets[s : s + read_size]) for s in range(0, maps, read_size)],
            "solve_flops": lambda: torch.from_numpy(embedding.astype(np.float32)) @ square,  # one K × K product per map: what a solve costs
        }
        seconds = {}
        for name, run in work.items():
            run()  # warm-up: the first touch of every page, the BLAS threads
            started = time.perf_counter()
            run()
            seconds[name] = time.perf_counter() - started
    rates = {name: round(maps / t, 1) for name, t in seconds.items()}
    return {
        "case": "diffcam", "images": maps, "read_per_s": rates["read"], "maps_per_s": rates["others"], "loo_maps_per_s": rates["own-class-loo"],
        "vs_read": round(rates["others"] / rates["read"], 3), "loo_vs_read": round(rates["own-class-loo"] / rates["read"], 3),
        "parts_per_s": {name: rates[name] for name in ("others_weights", "loo_weights", "channel_sums", "solve_flops")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="*", default=CASES)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print_case(run_case(args.case, args.images, args.size, args.batch, args.device))
        return
    options = ["--images", str(args.images), "--size", str(args.size), "--batch", str(args.batch), "--device", args.device]
    results = run_cases(__file__, args.cases, options)
    rate = {case: r.get("images_per_s", r.get("maps_per_s")) for case, r in results.items()}
    ratios = {
        "4x4 ours / package (layer4)": ("ours_4x4", "package_4x4"),
        "4x4 ours / package (layer3)": ("ours_4x4@layer3", "package_4x4@layer3"),
        "Grad-CAM ours / forward+grad (layer4)": ("ours_gradcam", "forward_grad"),
        "Grad-CAM ours / forward+grad (layer3)": ("ours_gradcam@layer3", "forward_grad@layer3"),
        "Grad-CAM ours / package": ("ours_gradcam", "package_gradcam"),
        "Grad-CAM ours / channels-last forward (layer4)": ("ours_gradcam", "forward_cl"),
        "4x4 ours / channels-last forward (layer4)": ("ours_4x4", "forward_cl"),
        "Score-CAM ours / package": ("ours_scorecam", "package_scorecam"),
        "Score-CAM 4 targets ours / package": ("ours_scorecam4", "package_scorecam4"),
    }
    for label, (a, b) in ratios.items():
        if a in rate and b in rate:
            print(f"{label}: {rate[a] / rate[b]:.2f}x")
    exit_if_any_failed(args.cases, results)


if __name__ == "__main__":
    main()
