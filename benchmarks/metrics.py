"""Metrics benchmark: each perturbation metric against its forward bound, and ROAD against the grad-cam package.

Run from the repository root inside the venv (each case runs in a fresh
process, so its peak resident memory is its own):

    python benchmarks/metrics.py --maps 64 --size 64 --batch 32 [--grey]

Same random smooth maps, same random-weight model (timm resnet10t,
output_stride 8, channels-last as the metrics run CNNs), one run. Cases:

* ``forward``: plain forward throughput of the model (images/s), as the
  metrics run it. The bound of a metric group is forward throughput divided by
  its forwards per map (``audit.metrics.evaluate.forwards_per_map``).
* ``ours_<metric>``: ``evaluate_saliency`` with that metric alone, for every
  metric of the registry (``audit.metrics.registry``) that runs the model, maps/s.
* ``package_road``: the package's ``ROADMostRelevantFirstAverage`` and
  ``ROADLeastRelevantFirstAverage`` at percentiles 10…90 on the same maps and
  batches, softmax target (the same 18 perturbed images per map as ours).
* ``ours_imputation`` / ``package_imputation``: the noisy linear imputation
  alone on the 18 masks of each map (imputed images/s).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from cases import exit_if_any_failed, print_case, run_cases  # benchmarks/cases.py (run from the repository root: python benchmarks/...)

def _perturbing_metrics() -> list[str]:
    """The registry's metrics that send images through the model (those with a forward bound)."""
    from audit.metrics.registry import METRICS
    from audit.settings import MetricSettings

    return [name for name, metric in METRICS.items() if metric.forwards(MetricSettings()) > 0]


GROUPS = _perturbing_metrics()
CASES = ["forward", *[f"ours_{g}" for g in GROUPS], "package_road", "ours_imputation", "package_imputation"]


def _setup(maps: int, size: int, grey: bool = False):
    import pandas as pd

    from audit.explain.store import saliency_dataset
    from audit.models.checkpoint import ModelMeta, build_model
    from audit.models.memory_format import inference_copy

    torch.manual_seed(0)
    meta = ModelMeta("resnet10t", {"output_stride": 8}, [f"c{i}" for i in range(10)], (3, size, size), (0.5,) * 3, (0.25,) * 3, "layer4")
    model = inference_copy(build_model(meta), (size, size))  # as the metrics run it; every case (the package's too) gets this model
    generator = torch.Generator().manual_seed(0)
    images = (F.avg_pool2d(torch.rand(maps, 3, size, size, generator=generator), 3, 1, 1) * 255).to(torch.uint8).numpy()
    if grey:  # greyscale stored as RGB, like the digits demo and many medical images
        images = np.repeat(images[:, :1], 3, axis=1)
    saliency = F.avg_pool2d(torch.rand(maps, 1, size, size, generator=generator), 9, 1, 4)[:, 0].numpy()
    plan = pd.DataFrame(
        {"method": "m", "image_index": np.arange(maps), "image_id": [f"i{i}" for i in range(maps)], "purpose": "anomaly", "variant": "m",
         "target": np.arange(maps) % 10, "contrasts": [[]] * maps, "reference": "", "compare": (np.arange(maps) + 1) % 10}
    )
    store = saliency_dataset(plan, saliency, (size, size), (size, size), {}, checks={"compare_class_map": list(saliency[::-1])})
    return model, meta, images, saliency, store


def run_case(case: str, maps: int, size: int, batch: int, grey: bool) -> dict:
    from audit.metrics.evaluate import evaluate_saliency, forwards_per_map
    from audit.metrics.perturbation import model_logits, removal_masks
    from audit.metrics.imputation import NORMALISED_NOISE, noisy_linear_imputation
    from audit.models.preprocess import normalise
    from audit.settings import MetricSettings

    torch.set_num_threads(torch.get_num_threads())
    model, meta, images, saliency, store = _setup(maps, size, grey)
    x = torch.as_tensor(images).float() / 255
    fractions = torch.tensor(MetricSettings().road_fractions)
    masks = torch.cat([removal_masks(torch.as_tensor(saliency), fractions), removal_masks(-torch.as_tensor(saliency), fractions)], dim=1)
    result: dict = {"case": case, "maps": maps}

    if case == "forward":
        repeated = x.repeat(18, 1, 1, 1)  # as many images as ROAD perturbs

        def work():
            model_logits(model, meta, repeated, batch)

        count, unit = len(repeated), "images_per_s"
    elif case.startswith("ours_") and case[5:] in GROUPS:
        settings = MetricSettings(batch_size=batch, metrics=(case[5:],))
        result["forwards_per_map"] = forwards_per_map(settings)[case[5:]]

        def work():
            evaluate_saliency(model, meta, images, store, "m", settings)

        count, unit = maps, "maps_per_s"
    elif case == "package_road":
        from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        inputs = normalise(x, meta.mean, meta.std)
        targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in store["target"].values]

        def work():
            for s in range(0, maps, batch):
                part = slice(s, s + batch)
                ROADMostRelevantFirstAverage()(inputs[part], saliency[part], targets[part], model)
                ROADLeastRelevantFirstAverage()(inputs[part], saliency[part], targets[part], model)

        count, unit = maps, "maps_per_s"
    elif case == "ours_imputation":
        removed = masks.reshape(-1, size, size)
        repeated = x[:, None].expand(-1, masks.shape[1], -1, -1, -1).reshape(-1, 3, size, size)
        noise = NORMALISED_NOISE * torch.tensor(meta.std)

        def work():
            for s in range(0, len(removed), batch * 18):
                noisy_linear_imputation(repeated[s : s + batch * 18], removed[s : s + batch * 18], noise)

        count, unit = len(removed), "imputations_per_s"
    elif case == "package_imputation":
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer

        inputs = normalise(x, meta.mean, meta.std)
        chosen = range(0, maps * 18, 7)  # every 7th of the 18 masks per map (all fractions, both orders): the package is slow

        def work():
            imputer = NoisyLinearImputer()
            for k in chosen:
                imputer(inputs[k // 18], (~masks[k // 18, k % 18]).float())

        count, unit = len(chosen), "imputations_per_s"
    else:
        raise ValueError(f"unknown case {case}")
    work()  # warm-up: a cold process runs its first pass ≈ 1.5× slower; every case is timed on its second run
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    result.update({"seconds": round(seconds, 3), unit: round(count / seconds, 2)})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grey", action="store_true", help="greyscale images (equal channels)")
    parser.add_argument("--cases", nargs="*", default=CASES)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print_case(run_case(args.case, args.maps, args.size, args.batch, args.grey))
        return
    options = ["--maps", str(args.maps), "--size", str(args.size), "--batch", str(args.batch)] + (["--grey"] if args.grey else [])
    results = run_cases(__file__, args.cases, options)
    forward = results.get("forward", {}).get("images_per_s")
    for group in GROUPS:
        r = results.get(f"ours_{group}")
        if r and forward:
            bound = forward / r["forwards_per_map"]
            print(f"{group}: {r['maps_per_s']:.2f} maps/s, bound {bound:.2f} maps/s ({r['forwards_per_map']} forwards/map): {r['maps_per_s'] / bound:.2f}x of bound")
    if "ours_road" in results and "package_road" in results:
        print(f"ROAD ours / package: {results['ours_road']['maps_per_s'] / results['package_road']['maps_per_s']:.2f}x")
    if "ours_imputation" in results and "package_imputation" in results:
        print(f"imputation ours / package: {results['ours_imputation']['imputations_per_s'] / results['package_imputation']['imputations_per_s']:.2f}x")
    exit_if_any_failed(args.cases, results)


if __name__ == "__main__":
    main()
