"""Operating the workflow (issue 13): cheap DAG builds, a real SLURM."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.workflow import CORES, ROOT, SNAKEMAKE, TINY, snakemake


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


SHARD_RULES = ("ingest_shard", "extract_features", "shard_statistics", "dataset_maps", "sample_metrics")
"""The rules with one job per shard."""
INDEX_RULES = {"training_shards", "feature_index"}
"""The local rules: each writes an index of shard paths (no rule with a shard's worth of inputs has a shard's worth of consumers)."""
MODEL_RULES = {"train_model", "extract_features", "dataset_maps", "sample_metrics", "explain", "confirm_shortcuts", "confirm_pairs", "metrics"}
"""The rules that declare ``resources: gpu=1``."""


def _dag_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dag_benchmark", ROOT / "benchmarks" / "dag.py")
    dag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag)
    return dag


def _listed_jobs(dry_run: str) -> list[tuple[str, int, dict[str, str]]]:
    """Each job a dry run lists: its rule, threads and resources (name → value)."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]*\]\n(?:local)?rule )", dry_run):
        rule = re.search(r"^(?:local)?rule (\w+):$", block, re.MULTILINE)
        if rule is None:
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        pairs = dict(item.split("=", 1) for item in resources.group(1).split(", ")) if resources else {}
        jobs.append((rule.group(1), int(threads.group(1)) if threads else 1, pairs))
    return jobs


def _cluster_dry_run(workdir: Path, config: Path, *profile_args: str) -> str:
    result = subprocess.run(
        [SNAKEMAKE, "-n", *profile_args, "--configfile", str(config), "--directory", str(workdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and "BUG" not in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
    return result.stderr + result.stdout  # Snakemake names the profiles it loads on stderr


@pytest.fixture(scope="module")
def listed_40(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("listed-40")
    return workdir, _dag_benchmark().listed_audit(workdir, 40)


@pytest.mark.parametrize("shards", [40, 1000])
@pytest.mark.parametrize("profile", ["slurm", "slurm-gpu"])
def test_both_cluster_profiles_dry_run_any_shard_count_one_submission_per_job_on_one_kind_of_partition(profile, shards, tmp_path, listed_40):
    """A listed audit of 40 and of 1,000 shards (benchmarks/dag.py) dry-runs through each cluster profile (grouped shard
    jobs ended in Snakemake's "BUG: Out of jobs ready" at 40 shards and never ended at 1,000): no group job, every
    shard rule's jobs once per shard; in the GPU profile exactly the model jobs ask for a GPU, on the gpu partition,
    in the CPU profile none does; a shard job's runtime is its images at the audit's rate (audit.cluster_time)."""
    from audit.cluster_time import shard_minutes
    from audit.settings import ClusterSettings

    workdir, config = listed_40 if shards == 40 else (tmp_path, _dag_benchmark().listed_audit(tmp_path, shards))
    output = _cluster_dry_run(workdir, config, "--workflow-profile", str(ROOT / "profiles" / profile))
    assert "Group job" not in output
    jobs = _listed_jobs(output)
    rules = pd.Series([rule for rule, _, _ in jobs]).value_counts()
    assert all(rules[rule] == shards for rule in SHARD_RULES), rules
    assert len(jobs) == 5 * shards + rules.drop(list(SHARD_RULES)).sum() and rules.drop(list(SHARD_RULES)).max() == 1
    settings = ClusterSettings()
    for rule, threads, resources in jobs:
        gpu = resources.get("gpu", "0") == "1"
        assert gpu == (profile == "slurm-gpu" and rule in MODEL_RULES), (rule, resources)
        assert resources.get("slurm_partition") == ("gpu" if gpu else "debug"), (rule, resources)
        assert threads <= 8 and "cpus_per_task" not in resources  # the plugin asks for the rule's threads
    rate = {"ingest_shard": settings.ingest_seconds_per_image, "extract_features": settings.features_seconds_per_image,
            "shard_statistics": settings.statistics_seconds_per_image, "dataset_maps": settings.dataset_maps_seconds_per_image}
    for rule, _, resources in jobs:
        if rule in rate:  # one image a shard in this listing
            assert int(resources["runtime"]) == shard_minutes(1, rate[rule], overhead_minutes=settings.overhead_minutes, max_minutes=settings.max_minutes)


@pytest.mark.parametrize("profile", ["slurm", "slurm-gpu"])
def test_a_cluster_profile_named_either_way_gives_the_same_jobs_and_the_default_profile_no_threads_or_limits(profile, listed_40):
    """`--profile` loads profiles/default as the workflow profile beside the cluster profile, `--workflow-profile`
    replaces it: both list the same jobs with the same threads and resources. profiles/default sets no threads and no
    resources but the local `gpu` limit, which both cluster profiles scope to one submission (Snakemake leaves a local
    resource out of the cluster-wide count), so its one model job at a time never reaches a cluster."""
    workdir, config = listed_40
    named = ROOT / "profiles" / profile
    as_workflow_profile = _cluster_dry_run(workdir, config, "--workflow-profile", str(named))
    as_profile = _cluster_dry_run(workdir, config, "--profile", str(named))
    assert "workflow specific profile profiles/default" in as_profile
    assert sorted(_listed_jobs(as_profile), key=str) == sorted(_listed_jobs(as_workflow_profile), key=str)
    default = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert not {"set-threads", "set-resources", "default-resources", "cores", "executor"} & set(default)
    assert set(default.get("resources", {})) <= {"gpu"}
    assert yaml.safe_load((named / "config.yaml").read_text())["set-resource-scopes"] == {"gpu": "local"}


def test_a_shard_too_large_for_the_time_cap_stops_the_dag_build_naming_the_shard_size_that_fits(tmp_path):
    """The limit is twice overhead + images × rate, rounded up (closed form); past the cap the dry run fails with the shard
    size that fits, before anything is submitted."""
    from audit.cluster_time import shard_minutes
    from audit.settings import ClusterSettings

    assert shard_minutes(10_000, 0.1, overhead_minutes=5, max_minutes=1440) == 44  # ⌈2 × (5 + 16.67)⌉
    assert shard_minutes(0, 0.1, overhead_minutes=5, max_minutes=1440) == 10
    defaults = ClusterSettings()  # the measured 2-core CPU rates: 100 shards of 10,000 images fit the default 24 h cap
    for stage in ("ingest", "features", "statistics", "dataset_maps"):
        assert shard_minutes(10_000, getattr(defaults, f"{stage}_seconds_per_image"), overhead_minutes=defaults.overhead_minutes, max_minutes=defaults.max_minutes) <= 90
    with pytest.raises(ValueError, match="shard_size to at most 1200"):  # 40 min hold 20 min of work: 1,200 images at 1 s
        shard_minutes(5000, 1.0, overhead_minutes=0, max_minutes=40)
    config = _dag_benchmark().listed_audit(tmp_path, 3)
    audit = yaml.safe_load(config.read_text())
    audit["audits"]["big"]["cluster"] = {"features_seconds_per_image": 600.0, "max_minutes": 20}
    config.write_text(yaml.safe_dump(audit))
    result = subprocess.run([SNAKEMAKE, "-n", "--workflow-profile", str(ROOT / "profiles" / "slurm"), "--configfile", str(config), "--directory", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "set features.shard_size to at most 0" in result.stdout + result.stderr, result.stdout[-2000:]


def _granted(state: str) -> tuple[str, str]:
    """(partition, the generic resources granted, e.g. ``gpu:1`` or ``(null)``) from ``scontrol show job --details``."""
    return re.search(r"\bPartition=(\S+)", state).group(1), re.search(r"\bJOB_GRES=(\S+)", state).group(1)


def _slurm_run(slurm_runs, profile: str):
    """One profile's finished run: every listed job but the index rules submitted once, as its own submission, and COMPLETED."""
    run = slurm_runs.result()[profile]
    assert run.returncode == 0, run.output[-4000:]
    listed = sorted(f"rule_{rule}" for rule in re.findall(r"^(?:rule|checkpoint) (\w+):$", run.output, re.MULTILINE))
    submitted = sorted(name.split("/")[0] for name in run.submitted.values())  # the plugin's log folder: rule_<rule>[/<wildcards>]
    assert submitted == listed and listed.count("rule_extract_features") == 2, (run.submitted, listed)  # two shards
    assert all("JobState=COMPLETED" in state for state in run.states.values()), run.states  # slurmctld's own record of each job
    local = set(re.findall(r"^localrule (\w+):$", run.output, re.MULTILINE))
    assert local == INDEX_RULES, local  # the index rules write a list of paths in Snakemake's own process; every other job is submitted
    return run


@pytest.mark.slurm
def test_the_cpu_profile_runs_the_tiny_audit_through_a_real_slurm_killed_midway_and_matches_a_local_run(slurm_runs, tiny_audit):
    """Single-node SLURM from Debian's packages (installed when missing), the tiny audit to its anomaly scores through
    profiles/slurm: every job goes through sbatch as its own submission on the ``debug`` partition with no GPU. Snakemake
    is killed (``kill -9``) while the training job runs: a restart while that job is still in the queue refuses to
    start, naming it; after ``audit.cluster_jobs wait`` the restart finishes the audit without submitting the training
    again (each job submitted once over both runs), and the results equal the local run's. The runs are a background
    thread (tests/slurm_run.py); this test reads their result."""
    run = _slurm_run(slurm_runs, "slurm")
    assert len(run.submitted) >= 6 + 3 * 2, run.submitted  # model check, listing, training, reference, two scores; three per shard
    assert run.refused.startswith("exit 1") and "still queued or running" in run.refused and run.orphan in run.refused, run.refused[-3000:]
    assert run.submitted[run.orphan] == "rule_train_model" and list(run.submitted.values()).count("rule_train_model") == 1, run.submitted
    for job, state in run.states.items():
        assert _granted(state) == ("debug", "(null)"), (run.submitted[job], state)
    first, second = tiny_audit / "results" / "tiny", run.workdir / "results" / "tiny"
    for table in ("embedding_anomalies.parquet", "local_anomalies.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(first / table), pd.read_parquet(second / table), check_exact=True)


@pytest.mark.slurm
def test_the_gpu_profile_gets_one_granted_gpu_per_model_job_on_a_real_slurm_and_matches_a_local_run(slurm_runs, tiny_audit):
    """profiles/slurm-gpu, the tiny audit to its dataset maps, on a node with two GPUs (stand-in device files, tests/local_slurm.py): slurmctld grants
    each model job (training, extraction, maps) exactly one GPU on the ``gpu`` partition and every other job none on
    ``debug``; each model job's log says the grant reached it (and, with AUDIT_DEVICE=cpu, that it ran on the CPU on
    purpose); the maps equal the local run's."""
    import xarray as xr

    from audit.storage import open_zarr

    run = _slurm_run(slurm_runs, "slurm-gpu")
    model_jobs = {"rule_train_model", "rule_extract_features", "rule_dataset_maps"}
    assert sum(name.split("/")[0] in model_jobs for name in run.submitted.values()) == 5, run.submitted
    for job, state in run.states.items():
        granted = ("gpu", "gpu:1") if run.submitted[job].split("/")[0] in model_jobs else ("debug", "(null)")
        assert _granted(state) == granted, (run.submitted[job], state)
    logs = run.workdir / "logs" / "tiny"
    for log in [logs / "train_model.log", *logs.glob("extract_features/shard-*.log"), *logs.glob("dataset_maps/shard-*.log")]:
        assert re.search(r"device cpu \(AUDIT_DEVICE=cpu, granted SLURM_GPUS_ON_NODE=1\)", log.read_text()), (log, log.read_text()[:2000])
    for shard in ("00000", "00001"):
        local, remote = (open_zarr(root / "results" / "tiny" / "dataset_maps" / f"shard-{shard}.zarr") for root in (tiny_audit, run.workdir))
        xr.testing.assert_identical(local.load(), remote.load())


@contextlib.contextmanager
def _distributed_scheduler() -> Iterator[str]:
    """A ``distributed`` scheduler and one single-threaded worker on 127.0.0.1 (the ``dask`` command line), stopped by
    their process ids; yields the scheduler's address once the worker has joined."""
    from distributed import Client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        processes.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.parametrize("scheduler", ["processes", "local-cluster", "address"])
def test_both_dask_rules_run_through_snakemake_on_every_scheduler_and_give_the_threaded_results(scheduler, tiny_audit, tmp_path):
    """reference_stats and metrics_summary rerun through Snakemake with ``dask.scheduler`` set to Dask's processes, a
    LocalCluster and the address of a running scheduler (their worker processes used to import the rule's script
    again and die on "snakemake is not defined"): their outputs equal the tiny audit's, run with threads."""
    import xarray as xr

    from audit.storage import open_zarr

    work = tmp_path / "work"
    shutil.copytree(tiny_audit, work, symlinks=True)
    config = yaml.safe_load(TINY.read_text())
    config["audits"] = {"tiny": config["audits"]["tiny"]}
    with contextlib.ExitStack() as stack:
        setting = stack.enter_context(_distributed_scheduler()) if scheduler == "address" else scheduler
        config["audits"]["tiny"]["dask"] = {"scheduler": setting}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        expected = {"processes": r"dask: processes scheduler, \d workers", "local-cluster": r"dask: local cluster of \d workers, dashboard http://\S+/status",
                    "address": f"dask: scheduler {setting} with 1 workers"}  # the job's threads, or the cluster's worker
        for rule, target in (("metrics_summary", "results/tiny/metrics_summary.parquet"), ("reference_stats", "results/tiny/reference.zarr")):
            # the summary first (a new reference store would put every job after it out of date), at the fixture's
            # cores: the same threads, so the same BLAS sums
            result = snakemake(target, "--forcerun", rule, "--cores", CORES, "--directory", str(work), "--configfile", str(tmp_path / "config.yaml"))
            assert result.returncode == 0 and re.findall(r"^(?:local)?rule (\w+):$", result.stdout, re.MULTILINE) == [rule], result.stdout[-4000:]
            log = (work / "logs" / "tiny" / f"{rule}.log").read_text()
            assert re.search(expected[scheduler], log), log[-2000:]
    results, threaded = work / "results" / "tiny", tiny_audit / "results" / "tiny"
    xr.testing.assert_identical(open_zarr(results / "reference.zarr").load(), open_zarr(threaded / "reference.zarr").load())
    for table in ("pairs.parquet", "similar_classes.parquet", "metrics_summary.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(results / table), pd.read_parquet(threaded / table), check_exact=True)


def test_the_processes_scheduler_keeps_one_pool_for_the_whole_job():
    """Dask's multiprocessing scheduler starts a new pool (each process importing the libraries again) for every
    compute unless given one: the job's computes share its pool, so every task runs in one of ``workers`` processes."""
    import os as worker_os

    import dask

    from audit.dask_scheduler import dask_scheduler

    with dask_scheduler("processes", 2):
        pids = {pid for _ in range(3) for pid in dask.compute(*[dask.delayed(worker_os.getpid)() for _ in range(6)])}
    assert 1 <= len(pids) <= 2 and worker_os.getpid() not in pids


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
    from audit.reference_groups.leave_one_out import LeaveOneOut
    from audit.reference_groups.store import write_reference_store
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


def _grown_audit(tmp_path: Path, digits_small, rows: np.ndarray) -> Path:
    """A manifest audit of the digits ``rows`` (PNG files) whose model the workflow trains (one epoch): shards of 20 images."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for i in rows:
        if not (data / f"{digits_small.image_ids[i]}.png").exists():  # a file rewritten is a changed image (its date)
            Image.fromarray(digits_small.images[i].transpose(1, 2, 0)).save(data / f"{digits_small.image_ids[i]}.png")
    labels = [str(digits_small.labels[i]) for i in rows]
    pd.DataFrame({"path": [f"{digits_small.image_ids[i]}.png" for i in rows], "label": labels}).to_csv(data / "manifest.csv", index=False)
    audit = {
        "dataset": {"source": "manifest", "path": "data/manifest.csv", "image_size": 32, "chunk": 16, "classes": [str(c) for c in range(10)]},
        "model": {"name": "resnet10t", "kwargs": {"output_stride": 8}, "layer": "layer4", "train": {"epochs": 1}},
        "features": {"shard_size": 20},
        "explain": {"top_anomalies": 1, "top_pairs": 1, "images_per_pair": 1, "methods": ["gradcam", "diffcam"], "sanity": False, "dataset_methods": []},
        "metrics": {"steps": 4, "metrics": ["deletion", "insertion"]},
    }
    config = tmp_path / "grown.yaml"
    config.write_text(yaml.safe_dump({"audits": {"grown": audit}}))
    return config


def test_a_grown_dataset_reruns_only_its_new_shards(digits_small, tmp_path):
    """Two scheduled runs; between them the manifest gains 10 % more images and loses one. The second run keeps the
    model the workflow trained in the first (no image moves split: seeded hashes), ingests and extracts only the new
    shard, recomputes the statistics of that shard and of the one that
    lost an image, and combines the reference from the shards' statistics: equal to one computed from
    every present image's features. The history has two rows and the report lists the new images."""
    from audit.data.shards import read_listing
    from audit.feature_store import open_features
    from audit.reference_groups.store import write_reference_store
    from audit.storage import open_zarr

    workdir = tmp_path / "work"
    environment = {**os.environ, "SNAKEMAKE_ARGS": f"--cores {CORES}"}
    config = _grown_audit(tmp_path, digits_small, np.arange(60))
    first = subprocess.run(["bash", str(SCHEDULE), str(config), str(workdir)], capture_output=True, text=True, timeout=600, env=environment)
    assert first.returncode == 0, first.stdout + first.stderr
    grown = np.setdiff1d(np.arange(66), [5])  # 6 new images, digits_small's image 5 removed
    _grown_audit(tmp_path, digits_small, grown)
    second = subprocess.run(["bash", str(SCHEDULE), str(config), str(workdir)], capture_output=True, text=True, timeout=600, env=environment)
    assert second.returncode == 0, second.stdout + second.stderr
    log = sorted((workdir / "logs" / "runs").glob("*.log"))[-1].read_text()

    jobs = lambda rule: re.findall(rf"rule {rule}:\n(?:    .*\n)*?    wildcards: audit=grown, shard=(\d+)", log)  # noqa: E731
    assert jobs("ingest_shard") == ["00003"] and jobs("extract_features") == ["00003"]
    assert sorted(jobs("shard_statistics")) == ["00000", "00003"]  # shard 0 lost image 5
    assert "rule train_model" not in log and "rule reference_stats" in log
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
