"""The Snakemake workflow: lint, dry-run, schema errors and an end-to-end run on a tiny config."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from audit.feature_store import open_features
from audit.metrics.registry import outputs
from audit.pair_insertion import contrastive_pair_rows
from audit.storage import open_zarr
from tests.workflow import CORES, ROOT, TINY, audit_images, snakemake


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout
    assert "Congratulations, your workflow is in a good condition!" in result.stdout


def test_dry_run_of_the_demo_lists_every_stage(tmp_path):
    result = snakemake("-n", "--quiet", "rules", "--directory", str(tmp_path), "--configfile", str(ROOT / "config" / "config.yaml"))
    assert result.returncode == 0, result.stdout
    for rule in ("list_images", "train_model", "reference_stats", "anomaly_scores", "explain_plan", "explain", "metrics", "metrics_summary", "report"):
        assert rule in result.stdout
    # The shards are known once the images are listed (a Snakemake checkpoint).
    assert "checkpoint jobs" in result.stdout



def test_end_to_end_artefacts_are_well_formed(tiny_audit):
    results = tiny_audit / "results" / "tiny"
    images = audit_images(results)
    assert images["pixels"].dims == ("image", "channel", "y", "x") and images["pixels"].dtype == np.uint8
    assert "pixels" in images.data_vars
    assert images.sizes["image"] == 240 and set(images["split"].values) == {"train", "audit"}

    features = open_features(sorted((results / "features").glob("shard-*.zarr")))
    assert features["activation"].dims == ("image", "unit", "layer_y", "layer_x") and features["embedding"].dims == ("image", "unit")
    assert features.sizes["image"] == 240 and features.sizes["class"] == 10
    assert np.isfinite(features["activation"].values).all()

    reference = open_zarr(results / "reference.zarr")
    assert reference.sizes["group"] == 22 and reference.attrs["estimator"] == "oas"
    assert ((reference["shrinkage"] > 0) & (reference["shrinkage"] <= 1)).all()
    assert reference["concept_vector"].dims == ("concept", "feature") and reference.sizes["concept"] == 11
    assert int(reference["concept_count"].sel(concept="concept:loops")) == 3

    anomalies = pd.read_parquet(results / "anomalies.parquet")
    assert len(anomalies) == 240 and (anomalies["score"] > 0).all()
    assert anomalies["flagged"].sum() == 7 and (anomalies.loc[anomalies["flagged"], "split"] == "audit").all()
    all_quality = pd.read_parquet(results / "anomaly_quality.parquet")
    overall = all_quality[(all_quality["ranked_by"] == "score") & (all_quality["level"] == "overall")].iloc[0]
    label_issue = all_quality[(all_quality["ranked_by"] == "label_issue") & (all_quality["level"] == "overall")].iloc[0]
    held_out = anomalies[anomalies["split"] != "train"]
    assert label_issue["images"] == len(held_out) and label_issue["flagged"] == 7
    # over the held-out images only (one epoch: the tiny model barely doubts a label, about 0.6; the demo is the measure)
    assert label_issue["auroc"] == pytest.approx(roc_auc_score(held_out["flagged"], held_out["label_issue"]))
    assert anomalies["relative_score"].notna().sum() == 240 and (anomalies["relative_score"] < anomalies["score"]).mean() > 0.5
    assert overall["flagged"] == 7 and overall["images"] == 240
    # planted label errors sit far from their (wrong) class: the ranking finds them well above chance
    assert overall["auroc"] > 0.8
    assert (anomalies.groupby("label")["rank"].min() == 1).all()
    # the local score: every image's largest cell distance, the cell where it peaks, ranked within its class
    local_maps = open_zarr(results / "local_maps.zarr")
    assert local_maps["local_map"].dims == ("image", "layer_y", "layer_x") and local_maps["local_map"].shape == (240, 4, 4)
    assert local_maps["local_map"].dtype == np.float16 and local_maps.attrs["channels"] == 512
    peak = local_maps["local_map"].values.astype(np.float32).reshape(240, -1)
    by_id = anomalies.set_index("image_id").loc[local_maps["image_id"].values.astype(str)]
    np.testing.assert_allclose(by_id["local_score"], peak.max(axis=1), rtol=1e-3)
    assert (by_id["local_row"] * 4 + by_id["local_column"] == peak.argmax(axis=1)).mean() > 0.95  # float16 ties aside
    assert (anomalies.groupby("label")["local_rank"].min() == 1).all() and anomalies["local_trimmed"].sum() >= 24  # ceil(10 % of each class)
    scopes = lambda ranking: list(all_quality.loc[all_quality["ranked_by"] == ranking, ["level", "scope"]].itertuples(index=False))  # noqa: E731
    assert scopes("local_score") == scopes("score")  # every ranking scored overall and in every class
    # the ranking the report leads with: the largest within-class robust z of the scores (audit.anomaly_ranking)
    assert (anomalies.groupby("label")["combined_rank"].min() == 1).all() and set(anomalies["odd_in"]) <= {"one place", "overall"}
    assert scopes("combined_score") == scopes("score") and len(scopes("score")) == 11

    similar = pd.read_parquet(results / "similar_classes.parquet")
    assert len(similar) == 30 and (similar.groupby("class")["rank"].max() == 3).all()
    pairs = pd.read_parquet(results / "pairs.parquet")
    assert len(pairs) == 45 and {"weight_cosine", "confused_a_as_b", "confused_b_as_a", "mean_distance", "rank"} <= set(pairs.columns)

    methods = {"gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "inputgrad", "finercam", "finercam_score", "diffcam"}
    assert {p.stem for p in (results / "saliency").glob("*.zarr")} == methods
    for method in methods:
        saliency = open_zarr(results / "saliency" / f"{method}.zarr")
        assert saliency["layer_map"].dims == ("map", "layer_y", "layer_x") and saliency.sizes["layer_y"] == 4
        assert saliency["image_map"].shape[1:] == (32, 32) and saliency["image_map"].dtype == np.float16
        assert np.isfinite(saliency["image_map"].values).all()
        assert saliency.attrs["method"] == method and saliency.attrs["signed"] == int(method == "diffcam")
        assert saliency.sizes["map"] == (28 if method == "diffcam" else 14)
        contrast, random_class, randomised = (
            np.isfinite(saliency[v].values).all(axis=(1, 2)) for v in ("compare_class_map", "random_class_map", "randomised_model_map")
        )
        assert (saliency["random_class"] != saliency["target"]).all() and saliency.attrs["format_version"] == 3
        if method == "diffcam":  # class-swapped maps for "vs all others" only; the head plays no part
            others = saliency["reference"].str.startswith("others:").values
            assert (contrast == others).all() and (random_class == others).all() and not randomised.any()
        else:
            assert contrast.all() and random_class.all() and randomised.all()
    assert open_zarr(results / "saliency" / "gradcam.zarr").attrs["gradients"].startswith("closed form")

    # every shortcut candidate is tested once, in the job of its class's part, and the parts are joined
    candidates, shortcuts = pd.read_parquet(results / "shortcut_candidates.parquet"), pd.read_parquet(results / "shortcuts.parquet")
    assert sorted(shortcuts["candidate"]) == sorted(candidates["candidate"]) and len(list((results / "shortcuts").glob("part-*.parquet"))) == 2
    assert list(shortcuts["confirmed"]) == sorted(shortcuts["confirmed"], reverse=True)
    assert set(open_zarr(results / "shortcut_examples.zarr")["candidate"].values) <= set(shortcuts.loc[shortcuts["tested"], "candidate"])

    # every pair direction's contrastive maps are tested by insertion, each with its control and intervals
    pair_tests = pd.read_parquet(results / "pair_tests.parquet")
    expected = {
        (int(a), int(b), method)
        for method in methods
        for a, b in zip(*(contrastive_pair_rows(open_zarr(results / "saliency" / f"{method}.zarr"))[c] for c in ("class_a", "class_b")))
    }
    assert {(a, b, m) for a, b, m in zip(pair_tests["class_a"], pair_tests["class_b"], pair_tests["method"])} == expected
    assert {m for _, _, m in expected} == {"finercam", "finercam_score", "diffcam"} and len(pair_tests) == len(expected)
    tested = pair_tests[pair_tests["tested"]]
    assert len(tested) and (tested["targets_tested"] > 0).all() and tested["region_share"].between(0, 0.25).all()
    for name in ("inserted", "inserted_control", "moved", "moved_control", "effect"):
        assert ((tested[f"{name}_low"] <= tested[name] + 1e-12) & (tested[name] <= tested[f"{name}_high"] + 1e-12)).all(), name

    metrics = pd.read_parquet(results / "metrics.parquet")
    # every output of every metric in the registry (the tiny audit has masks: the digits' ink)
    assert set(metrics["metric"]) == set(outputs())
    assert set(metrics["method"]) == methods
    assert set(metrics.loc[metrics["metric"] == "relative_confidence_drop", "fraction"]) == {0.05, 0.1}
    assert np.allclose(sorted(set(metrics.loc[metrics["metric"] == "road_morf", "fraction"])), np.arange(1, 10) / 10)
    curves = metrics[metrics["metric"].isin(["deletion_auc", "insertion_auc", "deletion_curve", "mif_auc", "lif_auc"])]
    assert (curves["baseline"] == "blur").all() and (curves["steps"] == 5).all()
    assert metrics.loc[metrics["metric"] == "lif_auc", "order"].eq("least-relevant-first").all()
    assert metrics.loc[metrics["metric"] == "road_morf", "baseline"].eq("noisy linear imputation").all()
    assert metrics.loc[metrics["metric"] == "deletion_auc", "value"].between(0, 1).all()
    sanity = metrics[metrics["metric"] == "sanity_similarity"].groupby("method")["value"]
    gradcam_maps = open_zarr(results / "saliency" / "gradcam.zarr")["image_map"].values.astype(np.float32)
    assert sanity.count()["diffcam"] == 0 and sanity.count()["gradcam"] == (np.ptp(gradcam_maps, axis=(1, 2)) > 0).sum() > 0
    assert metrics.loc[metrics["metric"] == "sanity_similarity", "value"].dropna().between(-1, 1).all()
    localization = metrics[metrics["metric"].isin(["energy_pointing_game", "iou", "pixel_auprc"])]  # the digits' ink masks
    assert localization["value"].dropna().between(0, 1).all()
    gradcam_pointing = localization.loc[(localization["method"] == "gradcam") & (localization["metric"] == "energy_pointing_game"), "value"]
    assert gradcam_pointing.notna().sum() == (gradcam_maps.max(axis=(1, 2)) > 0).sum() > 0  # undefined for a map with no positive value
    assert set(localization.loc[localization["metric"] == "iou", "parameter"]) >= {"otsu"}
    summary = pd.read_parquet(results / "metrics_summary.parquet")
    assert set(summary["level"]) == {"overall", "class"}
    overall = summary[(summary["level"] == "overall") & (summary["metric"] == "deletion_auc")].set_index("variant")
    per_map = metrics[metrics["metric"] == "deletion_auc"].groupby("variant")["value"]
    np.testing.assert_allclose(overall["mean"].sort_index(), per_map.mean().sort_index())
    assert (overall["n"].sort_index() == per_map.count().sort_index()).all()

    for log in ("list_images", "ingest_shard/shard-00000", "train_model", "extract_features/shard-00000", "reference_stats", "report"):
        assert (tiny_audit / "logs" / "tiny" / f"{log}.log").exists()

    table = pd.read_parquet(results / "images.parquet")  # the export for dataframe tools
    assert len(table) == 240 and list(table["image_id"]) == list(features["image_id"].values)
    assert (table["top1_class"] == table["prediction"]).all() and (table["top1_probability"] >= table["top2_probability"]).all()
    assert table["probability"].between(0, 1).all() and table["flagged"].sum() == 7
    by_id = anomalies.set_index("image_id")
    assert (table.set_index("image_id")["anomaly_rank"] == by_id.loc[table["image_id"], "combined_rank"]).all()
    subjects = table[table["overlays"] != ""]
    saliency_ids = set(open_zarr(results / "saliency" / "gradcam.zarr")["image_id"].values)
    assert set(subjects["image_id"]) == saliency_ids
    files = [f for row in subjects["overlays"] for f in row.split(";")]
    assert all((results / f).is_file() for f in files) and len(files) == sum(len(row.split(";")) for row in subjects["overlay_maps"])

    html = (tiny_audit / "reports" / "tiny.html").read_text()
    assert "Intra-class anomaly ranking" in html and "Class-pair discrimination" in html and "Method quality" in html
    assert "data:image/png;base64," in html and 'src="http' not in html
    assert "ROAD combined" in html and "class sensitivity" in html and "Known anomalies" in html
    assert "energy pointing game" in html
    # both directions of the top pair have their section (a rebound name once dropped every direction after the first)
    directions = {(int(a), int(b)) for a, b, p in zip(*(open_zarr(results / "saliency" / "gradcam.zarr")[k].values for k in ("target", "compare", "purpose"))) if p == "pair"}
    assert len(directions) == 2 and {tuple(map(int, d)) for d in re.findall(r'<h3 id="pair-(\d+)-(\d+)"', html)} == directions


def test_vit_audit_end_to_end(tiny_vit_audit):
    """A tiny timm ViT with CLS and a register token: CDAM (class, concept, Smooth, Integrated), attention, Grad-CAM, DiffCAM."""
    results = tiny_vit_audit / "results" / "tiny_vit"
    features = open_features(sorted((results / "features").glob("shard-*.zarr")))
    assert features["activation"].shape[1:] == (32, 4, 4) and features.attrs["layer"] == "blocks.1.norm1"
    for method in ("gradcam", "cdam", "cdam_smooth", "cdam_integrated", "cdam_concept", "attention", "diffcam"):
        saliency = open_zarr(results / "saliency" / f"{method}.zarr")
        assert saliency.sizes["layer_y"] == 4 and saliency["image_map"].shape[1:] == (32, 32)
        assert np.isfinite(saliency["layer_map"].values).all()
    concept = open_zarr(results / "saliency" / "cdam_concept.zarr")
    assert "concept:loops" in set(concept["reference"].values) and any(r.startswith("class:") for r in concept["reference"].values)
    assert open_zarr(results / "saliency" / "gradcam.zarr").attrs["gradients"] == "autograd through the head side"
    attention = open_zarr(results / "saliency" / "attention.zarr")["layer_map"].values.astype(np.float32)
    assert (attention >= 0).all() and (attention.sum(axis=(1, 2)) <= 1.001).all()
    html = (tiny_vit_audit / "reports" / "tiny_vit.html").read_text()
    # the method-quality table lists every method's maps in its first column (the provenance's config names them too)
    quality = html[html.index('<h2 id="quality">') :]
    quality = quality[: quality.index("</table>")]
    rows = set(re.findall(r"<tr><td>([^<]+)</td>", quality))
    for method in ("gradcam", "cdam", "cdam_smooth", "cdam_integrated", "cdam_concept", "attention"):
        assert any(row == method or row.startswith(f"{method} ") for row in rows), (method, rows)
    sanity = pd.read_parquet(results / "metrics.parquet").query("metric == 'sanity_similarity'")
    assert set(sanity["order"]) == {"classifier head and block blocks.1 re-initialised (seed 0)"}
    assert (sanity.groupby("method")["value"].count()[["cdam", "attention", "gradcam"]] > 0).all()


def test_rerun_has_nothing_to_do(tiny_audit):
    result = snakemake("reports/tiny.html", "-n", "--directory", str(tiny_audit), "--configfile", str(TINY))
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout


def test_snakemakes_own_report_packages_the_html_report_and_the_key_tables(tiny_audit, tmp_path):
    """snakemake --report: a zip with the audit's HTML report, the tables flagged with report() (with their captions) and the run statistics."""
    import zipfile

    archive = tmp_path / "report.zip"
    result = snakemake("reports/tiny.html", "results/tiny/images.parquet", "--report", str(archive), "--directory", str(tiny_audit), "--configfile", str(TINY))
    assert result.returncode == 0, result.stdout[-3000:]
    names = zipfile.ZipFile(archive).namelist()
    for artefact in ("tiny.html", "anomalies.parquet", "pairs.parquet", "metrics_summary.parquet", "images.parquet"):
        assert any(name.endswith("/" + artefact) for name in names), (artefact, names)
    overview = zipfile.ZipFile(archive).read("report/report.html").decode("utf-8")
    assert "squared Mahalanobis distance" in overview and "extract_features" in overview  # a caption; the run statistics


def test_report_draws_the_standout_classes_in_full_and_lists_the_rest(tiny_audit):
    """report.full_classes = 3: three class sections (those whose top image stands out most), the other seven in a table; no link dangles."""
    import re

    from audit.report.findings import class_standout
    from audit.report.render import render_report
    from audit.report.strategy_section import ranked_classes
    from tests.workflow import report_inputs

    results = tiny_audit / "results" / "tiny"
    html = render_report(report_inputs(results, full_classes=3))
    drawn = re.findall(r'<h3 id="class-(\d+)"', html)
    standout = class_standout(pd.read_parquet(results / "anomalies.parquet"))
    assert sorted(map(int, drawn)) == sorted(standout.index[:3]) and html.count('<h3 id="class-') == 3
    start = html.index('id="other-classes"')
    other = html[start : html.index("</table>", start)]
    assert other.count("<tr><td>") == 7 and all(f"<td>{image}</td>" in other for image in standout["image_id"].iloc[3:])
    ids = set(re.findall(r'id="([^"]+)"', html))
    assert {link for link in re.findall(r'href="#([^"]+)"', html)} <= ids
    # the strategies section draws as many classes, ranked by their most distinct cluster, and lists the rest
    ranked = ranked_classes(pd.read_parquet(results / "strategies.parquet"), pd.read_parquet(results / "shortcuts.parquet"))
    assert [int(c) for c in re.findall(r'<h3 id="strategies-(\d+)"', html)] == list(ranked.index[:3])
    start = html.index('id="strategies-other"')
    assert html[start : html.index("</table>", start)].count("<tr><td>") == 7


def _edited_config(tmp_path: Path, section: str, key: str, value) -> Path:
    config = yaml.safe_load(TINY.read_text())
    config["audits"]["tiny"].setdefault(section, {})[key] = value
    path = tmp_path / f"{section}-{key}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _planned_rules(result: subprocess.CompletedProcess) -> set[str]:
    """The rules of the jobs a dry run lists."""
    return {line.split()[1].rstrip(":") for line in result.stdout.splitlines() if line.startswith(("rule ", "localrule ", "checkpoint "))}


def test_speed_only_settings_rerun_nothing(tiny_audit, tmp_path):
    """Params are narrow: batch sizes and workers change how fast a job runs, not what it writes."""
    for section, key, value in (("features", "batch_size", 7), ("features", "loader_workers", 0), ("explain", "score_batch", 5), ("metrics", "batch_size", 3)):
        result = snakemake("reports/tiny.html", "-n", "--directory", str(tiny_audit), "--configfile", str(_edited_config(tmp_path, section, key, value)))
        assert result.returncode == 0 and "Nothing to be done" in result.stdout, (section, key, result.stdout[-2000:])


def test_a_method_parameter_reruns_the_maps_not_the_plan(tiny_audit, tmp_path):
    result = snakemake("reports/tiny.html", "-n", "--directory", str(tiny_audit), "--configfile", str(_edited_config(tmp_path, "explain", "finer_gamma", 0.3)))
    assert result.returncode == 0, result.stdout[-2000:]
    # Finer-CAM's γ also changes its dataset maps, so the strategies (with the shortcut candidates and their test) and the anomaly
    # table's map columns follow; the plan does not
    assert _planned_rules(result) == {"dataset_maps", "strategies", "confirm_shortcuts", "collect_shortcuts", "anomalies", "explain", "confirm_pairs", "metrics", "metrics_summary", "report"}
    config = _edited_config(tmp_path, "explain", "top_pairs", 2)
    result = snakemake("reports/tiny.html", "results/tiny/images.parquet", "-n", "--directory", str(tiny_audit), "--configfile", str(config))
    assert _planned_rules(result) == {"explain_plan", "explain", "confirm_pairs", "metrics", "metrics_summary", "report", "export_images"}


def test_the_summarys_and_the_samples_settings_rescore_no_report_map(tiny_audit, tmp_path):
    """The bootstrap changes the summary alone; the sample's size adds the sample's jobs, never the subjects' metrics."""
    result = snakemake("reports/tiny.html", "-n", "--directory", str(tiny_audit), "--configfile", str(_edited_config(tmp_path, "metrics", "bootstrap", 300)))
    assert _planned_rules(result) == {"metrics_summary", "report"}, result.stdout[-2000:]
    result = snakemake("reports/tiny.html", "-n", "--directory", str(tiny_audit), "--configfile", str(_edited_config(tmp_path, "metrics", "sample_per_class", 2)))
    assert _planned_rules(result) == {"sample_metrics", "metrics_summary", "report"}, result.stdout[-2000:]


def test_a_method_that_does_not_fit_the_model_fails_before_any_data_is_read(tmp_path):
    config = _edited_config(tmp_path, "explain", "methods", ["gradcam", "cdam", "attention"])
    result = snakemake("reports/tiny.html", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(config))
    assert result.returncode != 0
    log = (tmp_path / "logs" / "tiny" / "check_model.log").read_text()
    assert "explain.methods or explain.dataset_methods do not fit model resnet10t (cnn, layer layer4): cdam applies to vit models, not cnn" in log
    assert "attention applies to vit models" in log
    assert not (tmp_path / "results" / "tiny" / "listing.parquet").exists()  # nothing ran after the check


def test_rerun_redoes_only_the_unfinished_shard(tiny_audit, tmp_path):
    """A shard killed mid-write leaves only a temporary: the rerun extracts that shard alone, identically."""
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_audit, workdir, ignore=shutil.ignore_patterns(".snakemake"))
    shards = workdir / "results" / "tiny" / "features"
    assert sorted(p.name for p in shards.iterdir()) == [f"shard-{i:05d}.zarr" for i in range(2)]
    original = open_zarr(shards / "shard-00001.zarr").load()
    # A run killed during extraction has written some shards and nothing after them.
    shutil.rmtree(shards / "shard-00001.zarr")
    shutil.rmtree(workdir / "results" / "tiny" / "reference.zarr")
    for later in ("pairs.parquet", "feature_shards.json"):
        (workdir / "results" / "tiny" / later).unlink()
    (shards / ".shard-00001.zarr.tmp-99999").mkdir()  # what a killed writer leaves
    result = snakemake("results/tiny/reference.zarr", "--cores", CORES, "--directory", str(workdir), "--configfile", str(TINY))
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count("rule extract_features:") == 1 and "shard=00001" in result.stdout
    assert not list(shards.glob(".*tmp*"))
    rebuilt = open_zarr(shards / "shard-00001.zarr").load()
    np.testing.assert_allclose(rebuilt["activation"].values, original["activation"].values, rtol=1e-5, atol=1e-6)
    assert (rebuilt["image_id"].values == original["image_id"].values).all()


def test_users_imagefolder_and_checkpoint_end_to_end(tmp_path, digits_small):
    """An ImageFolder tree (with a corrupt file and a small class) and a user's safetensors checkpoint."""
    import safetensors.torch
    import torch
    from PIL import Image

    from audit.models.train import fit_model
    from audit.settings import ModelSettings, TrainSettings

    names = {0: "zero", 1: "one", 7: "s<e>ven"}
    root = tmp_path / "tree"
    for digit, name in names.items():
        members = np.flatnonzero(digits_small.labels == digit)[: 6 if digit == 7 else 25]
        for i in members:
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(digits_small.images[i].transpose(1, 2, 0)).save(root / name / f"{digits_small.image_ids[i]}.png")
    (root / "zero" / "broken.png").write_bytes(b"garbage")

    from audit.data.dataset import ImageDataset

    keep = np.isin(digits_small.labels, list(names))
    subset = ImageDataset(
        images=digits_small.images[keep],
        labels=np.searchsorted(sorted(names), digits_small.labels[keep]),
        split=np.where(np.arange(keep.sum()) % 4 == 0, "audit", "train"),
        image_ids=digits_small.image_ids[keep],
        class_names=sorted(names.values()),
    )
    model, _ = fit_model(subset, ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=1)))
    weights = tmp_path / "user_model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    backbone = tmp_path / "backbone.pth"  # a self-supervised-style backbone: no classifier weights
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, backbone)

    config = {
        "audits": {
            "user": {
                "dataset": {"source": "imagefolder", "path": str(root), "image_size": 32, "chunk": 16},
                "model": {"name": "resnet10t", "kwargs": {"output_stride": 8}, "checkpoint": str(weights)},
                "explain": {"top_anomalies": 1, "top_pairs": 1, "images_per_pair": 1, "methods": ["gradcam", "finercam", "diffcam", "eigencam", "package-EigenCAM"],
                            "dataset_methods": []},  # no dataset maps: the backbone audit has them
                "metrics": {"steps": 4},
            },
            "backbone": {
                "dataset": {"source": "imagefolder", "path": str(root), "image_size": 32, "chunk": 16},
                "model": {"name": "resnet10t", "kwargs": {"output_stride": 8}, "checkpoint": str(backbone), "head": False},
                "explain": {"top_anomalies": 1, "top_pairs": 1, "images_per_pair": 1, "methods": ["gradcam", "eigencam", "diffcam"]},
            },
        }
    }
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("reports/user.html", "reports/backbone.html", "--cores", CORES, "--directory", str(tmp_path), "--configfile", str(tmp_path / "user.yaml"))
    assert result.returncode == 0, result.stdout[-5000:]
    assert "rule train_model" not in result.stdout and "rule import_model" in result.stdout

    results = tmp_path / "results" / "user"
    rejects = pd.read_parquet(results / "rejects.parquet")
    assert list(rejects["image_id"]) == ["zero/broken.png"]
    assert not (results / "dataset_maps").exists() and not (results / "strategies.parquet").exists()  # explain.dataset_methods: []
    features = open_features(sorted((results / "features").glob("shard-*.zarr")))
    assert list(features["class"].values) == ["one", "s<e>ven", "zero"] and features.sizes["image"] == 56
    reference = open_zarr(results / "reference.zarr")
    assert str(reference["covariance"].sel(group="class:s<e>ven").values) == "pooled"
    package = open_zarr(results / "saliency" / "package-EigenCAM.zarr")
    assert package.attrs["normalised"].startswith("min-max") and float(package["image_map"].max()) <= 1.0
    assert set(pd.read_parquet(results / "metrics.parquet")["method"]) == {"gradcam", "finercam", "diffcam", "eigencam", "package-EigenCAM"}
    eigencam = pd.read_parquet(results / "metrics.parquet").query("method == 'eigencam'")
    # class-agnostic: the compare-class and random-class maps are the map itself
    assert (eigencam.query("metric == 'class_sensitivity'")["value"].abs() < 1e-6).all()
    assert (eigencam.query("metric == 'random_logit_similarity'")["value"].dropna() > 0.999).all()
    html = (tmp_path / "reports" / "user.html").read_text()
    assert "Rejected at ingest: 1 images" in html and "s&lt;e&gt;ven" in html and "s<e>ven" not in html
    assert "pooled within-class covariance" in html

    # The backbone audit: references, anomaly ranking and DiffCAM; no gradients, no probabilities.
    results = tmp_path / "results" / "backbone"
    features = open_features(sorted((results / "features").glob("shard-*.zarr")))
    assert "logits" not in features and "prediction" not in features.coords
    assert features.sizes["feature"] == 512
    assert sorted(p.name for p in (results / "saliency").glob("*.zarr")) == ["diffcam.zarr", "eigencam.zarr"]  # Grad-CAM needs logits
    backbone_metrics = pd.read_parquet(results / "metrics.parquet")  # the metrics that read maps alone (no masks here)
    assert set(backbone_metrics["method"]) == {"diffcam", "eigencam"}
    assert set(backbone_metrics["metric"]) == {"compactness", "sparseness", "complexity", "concentration"} and backbone_metrics["value"].notna().all()
    pairs = pd.read_parquet(results / "pairs.parquet")
    assert pairs["weight_cosine"].isna().all() and pairs["mean_distance"].is_monotonic_increasing
    assert pd.read_parquet(results / "anomalies.parquet")["score"].notna().sum() == 56
    assert set(pd.read_parquet(results / "strategies.parquet")["class"]) == {0, 1, 2}  # DiffCAM's dataset maps, clustered
    html = (tmp_path / "reports" / "backbone.html").read_text()
    assert "a backbone without a classifier head" in html and "only the metrics that read the maps alone are computed" in html
    quality = html[html.index('id="quality"') : html.index("<summary>Conventions</summary>")]
    assert "sparseness (Gini)" in quality and "deletion AUC" not in quality and "ROAD" not in quality


def test_a_killed_dataset_maps_shard_is_redone_alone(tiny_audit, tmp_path):
    """Dataset maps are one job per shard: a shard killed mid-write is mapped again by itself, identically."""
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_audit, workdir, ignore=shutil.ignore_patterns(".snakemake"))
    results = workdir / "results" / "tiny"
    shards = results / "dataset_maps"
    assert sorted(p.name for p in shards.iterdir()) == [f"shard-{i:05d}.zarr" for i in range(2)]
    original = open_zarr(shards / "shard-00001.zarr").load()
    shutil.rmtree(shards / "shard-00001.zarr")
    (shards / ".shard-00001.zarr.tmp-99999").mkdir()  # what a killed writer leaves
    for later in ("strategies.parquet", "map_outliers.parquet"):
        (results / later).unlink()
    result = snakemake("results/tiny/strategies.parquet", "--cores", CORES, "--directory", str(workdir), "--configfile", str(TINY))
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count("rule dataset_maps:") == 1 and "shard=00001" in result.stdout
    assert not list(shards.glob(".*tmp*"))
    rebuilt = open_zarr(shards / "shard-00001.zarr").load()
    assert (rebuilt["image_id"].values == original["image_id"].values).all()
    np.testing.assert_allclose(rebuilt["map"].values.astype(np.float32), original["map"].values.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(rebuilt["scale"].values, original["scale"].values, rtol=1e-4)
    strategies = pd.read_parquet(results / "strategies.parquet")
    assert len(strategies) >= 10 and set(strategies["class"]) == set(range(10))


def test_a_sample_of_the_dataset_maps_is_scored_and_pooled_into_the_summary(tiny_audit, tmp_path):
    """metrics.sample_per_class: 1 on the tiny audit: one sample job per shard scores one image per class (its four
    dataset maps), and the summary's means and counts cover the report subjects' maps and the sample."""
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_audit, workdir, ignore=shutil.ignore_patterns(".snakemake"))
    (workdir / "results" / "tiny" / "metrics_summary.parquet").unlink()  # the copy has no record of the params: redo the summary
    config = _edited_config(tmp_path, "metrics", "sample_per_class", 1)
    result = snakemake("results/tiny/metrics_summary.parquet", "--cores", CORES, "--directory", str(workdir), "--configfile", str(config))
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count("rule sample_metrics:") == 2 and "rule metrics_summary:" in result.stdout
    assert "rule explain:" not in result.stdout and "rule metrics:" not in result.stdout  # the report's maps and their scores stay
    results = workdir / "results" / "tiny"
    samples = pd.concat([pd.read_parquet(p) for p in sorted((results / "sample_metrics").glob("shard-*.parquet"))])
    assert (samples["purpose"] == "sample").all() and (samples["map"] == -1).all()
    sampled = samples.drop_duplicates("image_id")
    assert len(sampled) == 10 and sorted(sampled["target"]) == list(range(10))
    assert set(samples["variant"]) == {"gradcam", "finercam top-3 predictions", "diffcam vs all others", "diffcam vs own class"}
    assert samples.loc[samples["metric"] == "deletion_auc", "value"].between(0, 1).all()
    summary = pd.read_parquet(results / "metrics_summary.parquet")
    overall = summary[(summary["level"] == "overall") & (summary["metric"] == "deletion_auc")].set_index("variant")
    pooled = pd.concat([pd.read_parquet(results / "metrics.parquet"), samples], ignore_index=True)
    per_map = pooled[pooled["metric"] == "deletion_auc"].groupby("variant")["value"]
    np.testing.assert_allclose(overall["mean"].sort_index(), per_map.mean().sort_index())
    assert (overall["n"].sort_index() == per_map.count().sort_index()).all()
    assert overall.loc["gradcam", "n"] == 14 + 10  # the report's Grad-CAM maps and the sample's


def test_the_report_says_where_the_class_order_came_from(tiny_audit):
    """An imported checkpoint without class names: the summary warns that the order was assumed; otherwise it does not.
    A planted shortcut (the demo's) is scored in the summary against the candidates."""
    from audit.report.render import render_report
    from tests.workflow import report_inputs

    import html as html_module

    from audit.report.render import CLASS_ORDER

    inputs = report_inputs(tiny_audit / "results" / "tiny")
    first = inputs.candidates.iloc[0]  # and a planted shortcut (the demo's) matching the first candidate: the summary scores it
    planted = {"class": first["class_name"], "share": 0.3, "corner": "bottom-right", "size": 8, "fade": 1.0, "images": list(first["members"])}
    assumed = html_module.unescape(render_report(dataclasses.replace(inputs, model={**inputs.model, "class_order": "assumed"}, planted=planted)))
    assert "Class order assumed" in assumed and "logit i taken as the audit's class i" in assumed
    assert f"of class {first['class_name']}'s images, {len(first['members'])} images): found as" in assumed and "with precision 1.00 and recall 1.00" in assumed
    html = (tiny_audit / "reports" / "tiny.html").read_text()  # the workflow trained the model: no warning
    assert "Class order assumed" not in html and CLASS_ORDER["trained"] in html


def test_make_check_finds_a_missing_intermediate_and_make_repair_rebuilds_it(tiny_audit, tmp_path):
    """Snakemake says "Nothing to be done" when an intermediate output is gone but what it feeds is present and
    newer; `make check` names it, and `make repair` reruns its rule and what depends on it."""
    workdir = tmp_path / "audit"
    shutil.copytree(tiny_audit, workdir, symlinks=True)
    (workdir / "results" / "tiny" / "map_outliers.parquet").unlink()
    args = f"ARGS=reports/tiny.html --directory {workdir} --configfile {TINY}"
    assert "Nothing to be done" in snakemake("reports/tiny.html", "-n", "--directory", str(workdir), "--configfile", str(TINY)).stdout
    make = lambda target: subprocess.run(["make", "--no-print-directory", target, args, f"CORES={CORES}"], cwd=ROOT, capture_output=True, text=True, timeout=900)  # noqa: E731
    check = make("check")
    assert check.returncode != 0 and "missing: results/tiny/map_outliers.parquet (rule strategies)" in check.stdout, check.stdout + check.stderr
    repair = make("repair")
    assert repair.returncode == 0 and "rerunning: strategies" in repair.stdout, (repair.stdout + repair.stderr)[-3000:]
    assert (workdir / "results" / "tiny" / "map_outliers.parquet").is_file()
    assert make("check").returncode == 0
    assert "Nothing to be done" in snakemake("reports/tiny.html", "-n", "--directory", str(workdir), "--configfile", str(TINY)).stdout


def test_the_most_faithful_method_is_chosen_among_those_that_pass_the_randomisation_check():
    """Attention has the lowest deletion AUC but its maps do not change with the model (rank correlation 1.0):
    the summary recommends the next method and names attention as left out, with the failure among the warnings."""
    from types import SimpleNamespace

    from audit.report.findings import findings

    rows = [
        ("attention", "deletion_auc", 0.10, 0.08, 0.12), ("cdam", "deletion_auc", 0.20, 0.15, 0.25), ("gradcam", "deletion_auc", 0.30, 0.26, 0.34),
        ("attention", "sanity_similarity", 1.00, 0.99, 1.00), ("cdam", "sanity_similarity", 0.10, 0.00, 0.20), ("gradcam", "sanity_similarity", 0.30, 0.20, 0.40),
    ]
    metrics = pd.DataFrame(rows, columns=["method", "metric", "mean", "ci_low", "ci_high"]).assign(level="overall", variant=lambda t: t["method"], n=40)
    inputs = SimpleNamespace(pairs=pd.DataFrame({"confusions": []}), anomaly_quality=pd.DataFrame(), metrics_summary=metrics)
    found = findings(inputs, ["0", "1"], pd.DataFrame({"standout": [], "image_id": [], "score": []}), set())
    assert found["best_method"]["variant"] == "cdam" and found["best_method"]["left_out"] == ["attention"]
    assert found["best_method"]["metric"] == "deletion AUC (lower is better)"
    assert any(w.startswith("attention fails the randomisation check") and "(rank correlation 1.00)" in w for w in found["warnings"])


def test_the_summary_ranks_methods_by_the_registry_flagged_output_in_its_direction(monkeypatch):
    """The ranking output and its direction come from the registry (``ranks_methods``), not a literal metric name:
    flagged on insertion AUC (higher is better), the highest passing method is recommended; the overlap of the top
    two intervals is warned about."""
    from dataclasses import replace
    from types import SimpleNamespace

    from audit.metrics import registry
    from audit.report.findings import findings

    insertion = replace(registry.outputs()["insertion_auc"], ranks_methods=True)
    monkeypatch.setattr("audit.report.findings.ranking_output", lambda: insertion)
    rows = [
        ("cdam", "insertion_auc", 0.50, 0.45, 0.55), ("gradcam", "insertion_auc", 0.70, 0.62, 0.78), ("scorecam", "insertion_auc", 0.60, 0.52, 0.66),
        ("gradcam", "deletion_auc", 0.9, 0.8, 1.0),
    ]
    metrics = pd.DataFrame(rows, columns=["method", "metric", "mean", "ci_low", "ci_high"]).assign(level="overall", variant=lambda t: t["method"], n=40)
    inputs = SimpleNamespace(pairs=pd.DataFrame({"confusions": []}), anomaly_quality=pd.DataFrame(), metrics_summary=metrics)
    found = findings(inputs, ["0", "1"], pd.DataFrame({"standout": [], "image_id": [], "score": []}), set())
    assert found["best_method"]["variant"] == "gradcam" and found["best_method"]["metric"] == "insertion AUC (higher is better)"
    assert found["warnings"] == [
        "its 95 % interval overlaps that of scorecam (0.600 [0.520, 0.660]): on these images the two are not told apart",
        "not checked for similarity after randomisation (not computed): a method that fails it could be the one named",
    ]


def test_the_summary_says_when_its_recommendation_has_no_interval_or_no_check():
    """One map per method gives no interval, and without the randomisation check's values nothing was checked: the
    recommendation stays, with both said, not a confident pick."""
    from types import SimpleNamespace

    from audit.report.findings import findings

    rows = [("cdam", "deletion_auc", 0.20, np.nan, np.nan, 1), ("gradcam", "deletion_auc", 0.30, np.nan, np.nan, 1)]
    metrics = pd.DataFrame(rows, columns=["method", "metric", "mean", "ci_low", "ci_high", "n"]).assign(level="overall", variant=lambda t: t["method"])
    inputs = SimpleNamespace(pairs=pd.DataFrame({"confusions": []}), anomaly_quality=pd.DataFrame(), metrics_summary=metrics)
    found = findings(inputs, ["0", "1"], pd.DataFrame({"standout": [], "image_id": [], "score": []}), set())
    assert found["best_method"]["variant"] == "cdam"
    assert found["warnings"] == [
        "its 95 % interval or that of gradcam is unknown (fewer than two maps): the two are not told apart",
        "not checked for similarity after randomisation (not computed): a method that fails it could be the one named",
    ]
