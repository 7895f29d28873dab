"""Operating the workflow (issue 13): cheap DAG builds, a real SLURM."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.workflow import CORES, ROOT, SNAKEMAKE, TINY


def test_building_the_dag_imports_neither_torch_nor_timm(tmp_path):
    """A cluster job parses the Snakefile once per job: the parse must not load torch (seconds) or timm."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", SNAKEMAKE, "-n", "--directory", str(tmp_path), "--configfile", str(TINY)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", result.stderr, re.MULTILINE))
    assert "snakemake.workflow" in imported and "audit.explain.registry" in imported  # the measurement sees the parse
    assert not {"torch", "timm", "pytorch_grad_cam"} & imported


SUBMISSIONS = ["rule_check_model", "rule_list_images", "group_images_ingest_shard", "group_images_ingest_shard", "rule_train_model", "group_features_extract_features_shard_statistics",
               "group_reference_anomaly_scores_collect_rejects_reference_stats", "rule_local_anomalies", "group_maps_dataset_maps",
               "group_audit_anomalies_collect_shortcuts_confirm_pairs_confirm_shortcuts_explain_..."]  # Snakemake names a group by its first five rules


def _group_blocks(dry_run: str) -> list[str]:
    """The text of each group job a dry run lists: from its "Group job" line to the next unindented line."""
    blocks, current = [], None
    for line in dry_run.splitlines():
        if "] Group job " in line:
            current = [line]
            blocks.append(current)
        elif current is not None and line and not line.startswith(" "):
            current = None
        elif current is not None:
            current.append(line)
    return ["\n".join(block) for block in blocks]


@pytest.mark.parametrize("profile", ["slurm", "slurm-gpu"])
def test_both_cluster_profiles_dry_run_40_shards_and_no_group_mixes_partitions_or_gpu_and_cpu(profile, tmp_path):
    """A listed audit of 40 shards (benchmarks/dag.py) dry-runs through each cluster profile as its workflow profile
    (it ended in Snakemake's "BUG: Out of jobs ready" with 20 image shards a submission, and the GPU profile's
    audit group mixed the gpu and the default partition); every group job asks for one partition, and either every
    job in it asks for a GPU or none does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dag_benchmark", ROOT / "benchmarks" / "dag.py")
    dag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag)
    config = dag.listed_audit(tmp_path, 40)
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--workflow-profile", str(ROOT / "profiles" / profile), "--configfile", str(config), "--directory", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and "BUG" not in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
    blocks = _group_blocks(result.stdout)
    assert len(blocks) >= 40 + 2 + 2  # 40 image shards, the feature and the map shards 20 a submission
    for block in blocks:
        resources = re.findall(r"^\s+resources: (.*)$", block, re.MULTILINE)
        partitions = {re.search(r"slurm_partition=(\w+)", r).group(1) for r in resources}
        assert len(partitions) == 1 and len({"gpu=1" in r for r in resources}) == 1, block[:2000]


@pytest.mark.slurm
def test_the_tiny_audit_runs_through_a_real_slurm_and_matches_a_local_run(slurm_audit, tiny_audit):
    """Single-node SLURM from Debian's packages (installed when missing): every job goes through sbatch,
    the profile's groups as one submission each (each image shard alone, the two feature shards with their statistics
    in one), and the results equal the local run's. The run is a background thread (tests/slurm_run.py); this
    test reads its result."""
    run = slurm_audit.result()
    if run.error is not None:
        raise run.error
    assert run.returncode == 0, run.output[-4000:]
    assert sorted(run.submitted.values()) == sorted(SUBMISSIONS), run.submitted
    assert all("JobState=COMPLETED" in state for state in run.states.values()), run.states  # slurmctld's own record of each job
    assert "localrule" not in run.output and run.output.count("    rule extract_features:") == 2
    first, second = tiny_audit / "results" / "tiny", slurm_audit.workdir / "work" / "results" / "tiny"
    for table in ("anomalies.parquet", "pairs.parquet", "explain_plan.parquet", "metrics.parquet", "metrics_summary.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(first / table), pd.read_parquet(second / table), check_exact=True)


def test_dask_stages_give_the_threaded_results_on_a_local_cluster(tmp_path, caplog):
    """Reference statistics (from a Zarr-backed embedding) and the bootstrap summary equal the threaded run's.
    (``processes``, Dask's own multiprocessing scheduler, costs 25 s here and is left to Dask's tests.)"""
    import logging

    import numpy as np
    import xarray as xr

    from audit.dask_scheduler import dask_scheduler
    from audit.metrics.summary import summarise_metrics
    from audit.reference import write_reference_store
    from audit.storage import open_zarr, write_zarr

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    write_zarr(xr.Dataset({"embedding": (("image", "unit"), rng.normal(size=(120, 6)) + labels[:, None])}), tmp_path / "features.zarr")
    metrics = pd.DataFrame({
        "method": "gradcam", "variant": "", "metric": np.repeat(["deletion", "insertion"], 60), "fraction": np.nan, "parameter": "",
        "target": np.tile(np.repeat([0, 1, 2], 20), 2), "value": rng.random(120),
    })
    results = {}
    for scheduler in ("threads", "local-cluster"):
        with caplog.at_level(logging.INFO, logger="audit.dask_scheduler"), dask_scheduler(scheduler, 2) as workers:
            embedding = open_zarr(tmp_path / "features.zarr")["embedding"].data.rechunk((25, 6))
            write_reference_store(embedding, labels, list("abcd"), tmp_path / f"{scheduler}.zarr", min_images=5, num_workers=workers)
            results[scheduler] = (open_zarr(tmp_path / f"{scheduler}.zarr").load(), summarise_metrics(metrics, 200, seed=0))
    (reference, summary), (other_reference, other_summary) = results.values()
    xr.testing.assert_identical(reference, other_reference)
    pd.testing.assert_frame_equal(summary, other_summary, check_exact=True)
    assert re.search(r"local cluster of 2 workers, dashboard http://\S+/status", caplog.text)


def test_a_bad_dask_scheduler_is_named():
    from audit.dask_scheduler import check_scheduler

    with pytest.raises(ValueError, match="dask.scheduler 'thread': expected threads, processes, local-cluster or a scheduler address"):
        check_scheduler("thread")
    check_scheduler("tcp://10.0.0.1:8786")


def _results(folder: Path, z, labels, names) -> None:
    """An audit's results folder with what the history reads: anomalies.parquet and reference.zarr."""
    import dask.array as da

    from audit.anomaly import anomaly_table
    from audit.anomaly_ranking import combined_ranking
    from audit.reference import LeaveOneOut, write_reference_store
    from audit.storage import open_zarr

    folder.mkdir(parents=True, exist_ok=True)
    write_reference_store(da.from_array(z, chunks=(50, z.shape[1])), labels, names, folder / "reference.zarr", min_images=5)
    reference = open_zarr(folder / "reference.zarr").load()
    ids = [f"i{n:03d}" for n in range(len(labels))]
    table = anomaly_table(z, labels, labels, np.array(ids), np.full(len(labels), "audit"), LeaveOneOut(reference), names)
    combined_ranking(table).to_parquet(folder / "anomalies.parquet")


def test_the_history_records_what_changed_between_runs(tmp_path):
    import json
    from datetime import datetime, timezone

    import numpy as np

    from audit.history import record_run
    from audit.storage import open_zarr

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    z = rng.normal(size=(100, 3)) + labels[:, None] * 4
    _results(tmp_path, z, labels, ["a", "b"])
    first = record_run(tmp_path, datetime(2026, 11, 1, tzinfo=timezone.utc))
    before = open_zarr(tmp_path / "reference.zarr").load()["mean"].sel(group="class:b").values
    # Second run: 10 more images of class b (one far from the rest), image i000 gone.
    grown = np.vstack([z, rng.normal(size=(10, 3)) + 4])
    grown[-1] = [40.0, 40.0, 40.0]
    labels2 = np.concatenate([labels, np.ones(10, int)])
    keep = np.arange(len(labels2)) != 0
    _results(tmp_path, grown, labels2, ["a", "b"])
    table = pd.read_parquet(tmp_path / "anomalies.parquet")
    pd.DataFrame(table[keep[table.index]]).to_parquet(tmp_path / "anomalies.parquet")
    history = record_run(tmp_path, datetime(2026, 11, 2, tzinfo=timezone.utc))
    assert len(first) == 1 and len(history) == 2
    assert first.loc[0, ["images", "new_images", "removed_images"]].tolist() == [100, 100, 0] and np.isnan(first.loc[0, "max_mean_drift"])
    last = history.iloc[-1]
    assert (last["images"], last["new_images"], last["removed_images"]) == (109, 10, 1)
    assert json.loads(last["class_counts"]) == {"a": 49, "b": 60}
    reference = open_zarr(tmp_path / "reference.zarr").load()
    covariance = reference["cholesky"].sel(group="class:b").values
    spread = np.sqrt(np.trace(covariance @ covariance.T))
    expected = np.linalg.norm(reference["mean"].sel(group="class:b").values - before) / spread
    assert json.loads(last["mean_drift"])["b"] == pytest.approx(expected) and json.loads(last["mean_drift"])["a"] == pytest.approx(0.0)
    assert last["new_anomalies"] >= 1 and last["anomalies"] >= 1
    assert last["run_started"] == pd.Timestamp("2026-11-02", tz="UTC")


@pytest.mark.parametrize("units", [128, 1024])
def test_the_drift_reads_a_known_shift_the_same_at_any_number_of_units(tmp_path, units):
    """A class mean moved by half the class's total standard deviation reads 0.5, and dropping one ordinary image
    of 40 reads about 1/39 of the distance of that image, at K = 128 and K = 1024 alike (the per-unit scale read √K times more)."""
    import json
    from datetime import datetime, timezone

    from audit.history import record_run

    rng = np.random.default_rng(units)
    labels = np.repeat([0, 1], 40)
    z = rng.normal(size=(80, units)) * 2.0
    z[labels == 1] += 10.0
    _results(tmp_path, z, labels, ["a", "b"])
    record_run(tmp_path, datetime(2026, 11, 1, tzinfo=timezone.utc))
    shifted = z.copy()
    shifted[labels == 0] += 0.5 * 2.0  # every unit by 0.5 σ: ‖δ‖ = 0.5 σ√K = 0.5 √(tr Σ)
    keep = np.arange(80) != 79  # one ordinary image of class b gone
    _results(tmp_path, shifted[keep], labels[keep], ["a", "b"])
    drift = json.loads(record_run(tmp_path, datetime(2026, 11, 2, tzinfo=timezone.utc)).iloc[-1]["mean_drift"])
    assert drift["a"] == pytest.approx(0.5, rel=0.1)  # sample covariance of 40 in 128+ dimensions: its trace within 10 %
    assert 0.5 / 39 < drift["b"] < 1.5 / 39


SCHEDULE = ROOT / "workflow" / "schedule" / "run-audit.sh"


def test_a_scheduled_run_skips_while_another_holds_the_lock(tmp_path):
    import fcntl

    workdir = tmp_path / "work"
    workdir.mkdir()
    with open(workdir / ".audit-run.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = subprocess.run(["bash", str(SCHEDULE), str(TINY), str(workdir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "this run is skipped" in result.stdout, result.stdout + result.stderr
    assert [p.name for p in workdir.iterdir()] == [".audit-run.lock"]  # nothing else written


def _grown_audit(tmp_path: Path, trained, digits_small, rows: np.ndarray) -> Path:
    """A manifest audit of the digits ``rows`` (PNG files) with an imported checkpoint: shards of 20 images."""
    import torch
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for i in rows:
        if not (data / f"{digits_small.image_ids[i]}.png").exists():  # a file rewritten is a changed image (its date)
            Image.fromarray(digits_small.images[i].transpose(1, 2, 0)).save(data / f"{digits_small.image_ids[i]}.png")
    labels = [str(digits_small.labels[i]) for i in rows]
    pd.DataFrame({"path": [f"{digits_small.image_ids[i]}.png" for i in rows], "label": labels}).to_csv(data / "manifest.csv", index=False)
    if not (tmp_path / "model.pth").exists():
        torch.save(trained[0].state_dict(), tmp_path / "model.pth")
    audit = {
        "dataset": {"source": "manifest", "path": "data/manifest.csv", "image_size": 32, "chunk": 16, "classes": [str(c) for c in range(10)]},
        "model": {"name": "resnet10t", "kwargs": {"output_stride": 8}, "layer": "layer4", "checkpoint": "model.pth"},
        "features": {"shard_size": 20},
        "explain": {"top_anomalies": 1, "top_pairs": 1, "images_per_pair": 1, "methods": ["gradcam", "diffcam"], "sanity": False, "dataset_methods": []},
        "metrics": {"steps": 4, "metrics": ["deletion", "insertion"]},
    }
    config = tmp_path / "grown.yaml"
    config.write_text(yaml.safe_dump({"audits": {"grown": audit}}))
    return config


def test_a_grown_dataset_reruns_only_its_new_shards(trained, digits_small, tmp_path):
    """Two scheduled runs; between them the manifest gains 10 % more images and loses one. The second run
    ingests and extracts only the new shard, recomputes the statistics of that shard and of the one that
    lost an image, and combines the reference from the shards' statistics: equal to one computed from
    every present image's features. The history has two rows and the report lists the new images."""
    from audit.data.shards import read_listing
    from audit.feature_store import open_features
    from audit.reference import write_reference_store
    from audit.storage import open_zarr

    workdir = tmp_path / "work"
    environment = {**os.environ, "SNAKEMAKE_ARGS": f"--cores {CORES}"}
    config = _grown_audit(tmp_path, trained, digits_small, np.arange(60))
    first = subprocess.run(["bash", str(SCHEDULE), str(config), str(workdir)], capture_output=True, text=True, timeout=600, env=environment)
    assert first.returncode == 0, first.stdout + first.stderr
    grown = np.setdiff1d(np.arange(66), [5])  # 6 new images, digits_small's image 5 removed
    _grown_audit(tmp_path, trained, digits_small, grown)
    second = subprocess.run(["bash", str(SCHEDULE), str(config), str(workdir)], capture_output=True, text=True, timeout=600, env=environment)
    assert second.returncode == 0, second.stdout + second.stderr
    log = sorted((workdir / "logs" / "runs").glob("*.log"))[-1].read_text()

    jobs = lambda rule: re.findall(rf"rule {rule}:\n(?:    .*\n)*?    wildcards: audit=grown, shard=(\d+)", log)  # noqa: E731
    assert jobs("ingest_shard") == ["00003"] and jobs("extract_features") == ["00003"]
    assert sorted(jobs("shard_statistics")) == ["00000", "00003"]  # shard 0 lost image 5
    assert "rule import_model" not in log and "rule reference_stats" in log
    results = workdir / "results" / "grown"
    listing = read_listing(results / "listing.parquet")
    assert listing.groupby("shard")["present"].sum().tolist() == [19, 20, 20, 6]

    history = pd.read_parquet(results / "history.parquet")
    assert history["images"].tolist() == [60, 65] and history["new_images"].tolist() == [60, 6] and history["removed_images"].tolist() == [0, 1]
    html = (workdir / "reports" / "grown.html").read_text()
    assert "6 images are new and 1 are gone since the last recorded run" in html
    assert all(f"<td>{digits_small.image_ids[i]}.png</td>" in html for i in range(60, 66))  # ids: paths relative to the manifest

    features = open_features(sorted((results / "features").glob("shard-*.zarr")), listing)
    assert features.sizes["image"] == 65 and digits_small.image_ids[5] not in set(features["image_id"].values)
    write_reference_store(features["embedding"].data, features["label"].values, [str(c) for c in range(10)], tmp_path / "direct.zarr", min_images=10)
    incremental, direct = open_zarr(results / "reference.zarr").load(), open_zarr(tmp_path / "direct.zarr").load()
    np.testing.assert_allclose(incremental["class_outer"].values, direct["class_outer"].values, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(incremental["mean"].values, direct["mean"].values, rtol=1e-12, equal_nan=True)


def test_relative_data_paths_are_relative_to_the_config_file(tmp_path):
    """A config beside its data, run from another working directory: the manifest and checkpoint are found."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "manifest.csv").write_text("path,label\n")
    (tmp_path / "project" / "weights.pth").write_bytes(b"")
    audit = yaml.safe_load(TINY.read_text())["audits"]["tiny"]
    audit["dataset"] = {"source": "manifest", "path": "data/manifest.csv", "image_size": 32}
    audit["model"]["checkpoint"] = "./weights.pth"
    config = tmp_path / "project" / "audit.yaml"
    config.write_text(yaml.safe_dump({"audits": {"tiny": audit}}))
    result = subprocess.run([SNAKEMAKE, "-n", "-p", "--directory", str(tmp_path / "scratch"), "--configfile", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert str(tmp_path / "project" / "weights.pth") in result.stdout and str(tmp_path / "project" / "data" / "manifest.csv") in result.stdout
