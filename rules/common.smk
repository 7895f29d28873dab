# Input functions, wildcard constraints and shared lists.
# Params are narrow: each rule gets exactly the config values that change its output (audit.settings), so
# editing a speed-only setting (batch sizes, workers) reruns nothing.
import json
import os
import re
from functools import lru_cache
from pathlib import Path

from audit.cluster_time import shard_minutes
from audit.data.shards import read_listing, shard_digests
from audit.data.manifest import require_dataset_path, resolve_config_paths
from audit.explain.registry import explainer
from audit.metrics.sample import shard_sample_digests
from audit.models.timm_names import require_timm_model
from audit.settings import (
    DATASET_KEYS,
    ClusterSettings,
    ConfirmSettings,
    LocalSettings,
    JOB_KEYS,
    PLAN_KEYS,
    DatasetSettings,
    ExplainSettings,
    FeatureSettings,
    MetricSettings,
    ModelSettings,
    ReferenceSettings,
    ReportSettings,
    StrategySettings,
)

# Relative data and checkpoint paths are relative to the config file (the last --configfile, else config/).
CONFIG_FOLDER = Path(workflow.overwrite_configfiles[-1]).parent if workflow.overwrite_configfiles else Path(workflow.basedir) / "config"

for _name, _audit in config["audits"].items():  # a misspelt model name or a missing data path fails here, at DAG build
    resolve_config_paths(_audit, CONFIG_FOLDER)
    try:
        require_timm_model(_audit["model"]["name"])
    except ValueError as error:
        raise ValueError(f"audit {_name}, model.name: {error}") from None
    _unmappable = [why for m in _audit["explain"]["dataset_methods"] if (why := explainer(m).dataset_map_problem())]
    if _unmappable:
        raise ValueError(f"audit {_name}, explain.dataset_methods: " + "; ".join(_unmappable))
    _mapped = [m for m in _audit["explain"]["dataset_methods"] if _audit["model"]["head"] or not explainer(m).needs_head]
    if _mapped and _audit["strategies"]["method"] not in (None, *_mapped):
        raise ValueError(
            f"audit {_name}, strategies.method: {_audit['strategies']['method']!r} is not among explain.dataset_methods "
            f"that apply to the model ({', '.join(_mapped)}): the strategies cluster one of the dataset maps"
        )
    try:
        require_dataset_path(_audit["dataset"]["source"], _audit["dataset"].get("path"))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"audit {_name}, {error}") from None
    if _audit["model"].get("checkpoint") and not Path(_audit["model"]["checkpoint"]).is_file():
        raise FileNotFoundError(f"audit {_name}, model.checkpoint: {_audit['model']['checkpoint']!r} is not a file")


wildcard_constraints:
    audit="[A-Za-z0-9][A-Za-z0-9_.-]*",
    shard=r"\d{5}",
    part=r"\d{5}",


def audit_config(wildcards):
    """The validated configuration of one audit."""
    return config["audits"][wildcards.audit]


def model_checkpoint(wildcards):
    """The audit's model: imported from the configured checkpoint, else trained by the workflow."""
    kind = "imported" if audit_config(wildcards)["model"].get("checkpoint") else "trained"
    return f"results/{wildcards.audit}/model/{kind}.pt"


def trains_model(wildcards):
    """Whether the workflow trains the audit's model (no checkpoint given)."""
    return not audit_config(wildcards)["model"].get("checkpoint")


SNAKEMAKE_PATH_SYNTAX = re.compile(r"[{}<>]")
"""Characters that Snakemake expands in an input path (wildcards {…}, pathvars <…>); a pathvar cannot be escaped."""


def as_input(path):
    """[path] as a rule input, or [] when the path holds Snakemake's wildcard or pathvar syntax (a user's folder
    may be named so): such a file is tracked by :func:`file_stamp` as a param instead."""
    return [] if SNAKEMAKE_PATH_SYNTAX.search(str(path)) else [path]


def file_stamp(path):
    """The size and modification time of a file that :func:`as_input` leaves out, so that editing it reruns the
    rule as an input would; '' for a file that is an input."""
    if as_input(path):
        return ""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def dataset_inputs(wildcards):
    """The manifest file, so that editing it relists the images."""
    dataset = audit_config(wildcards)["dataset"]
    return as_input(dataset["path"]) if dataset["source"] == "manifest" else []


def dataset_stamp(wildcards):
    """The manifest's stamp where its path cannot be an input (:func:`file_stamp`)."""
    dataset = audit_config(wildcards)["dataset"]
    return file_stamp(dataset["path"]) if dataset["source"] == "manifest" else ""


def folder_dates(wildcards):
    """An ImageFolder tree's folders (two levels: classes, or splits and classes) with their modification
    times, which change when an image is added to or removed from them: as a parameter, a change relists
    the images (a path input would not do: folder names may hold Snakemake's wildcard or pathvar braces).
    Nested folders and files edited in place are seen by `--forcerun list_images`, which scheduled runs use."""
    dataset = audit_config(wildcards)["dataset"]
    if dataset["source"] != "imagefolder":
        return ""
    root = Path(dataset["path"])
    folders = sorted(p for p in [*root.glob("*/"), *root.glob("*/*/")] if p.is_dir())
    return ";".join(f"{p.relative_to(root)}:{p.stat().st_mtime_ns}" for p in folders)


def listing(wildcards):
    """The digests of the audit's listing (audit.data.shards), once the list_images checkpoint has run."""
    return _digests(*_listing_version(wildcards))


def _listing_version(wildcards):
    """The audit's listing file and its modification time (the key of the caches below), once list_images has run."""
    path = checkpoints.list_images.get(audit=wildcards.audit).output.listing
    return path, os.stat(path).st_mtime_ns


@lru_cache(maxsize=16)
def _digests(path, modified):
    """Read once per listing version, not once per job: a listing of many shards is asked for by every shard's jobs."""
    return shard_digests(read_listing(path))


def _shard_paths(wildcards, pattern):
    return [pattern.format(audit=wildcards.audit, shard=f"{shard:05d}") for shard in listing(wildcards).shards]


def image_shards(wildcards):
    return _shard_paths(wildcards, "results/{audit}/images/shard-{shard}.zarr")


TRAINING_SHARDS = "results/{audit}/model/training_shards.json"
"""The index of the image shards the workflow-trained model is trained on (rule training_shards)."""

FEATURE_INDEX = "results/{audit}/feature_shards.json"
"""The index of the feature shards and their statistics that reference_stats reads (rule feature_index)."""


def refuse_to_run_beside_orphaned_jobs():
    """Raise when this user's SLURM queue holds jobs of the config's audits in this working directory: a killed run's
    jobs that still run would write the same files as this run's (audit.cluster_jobs says how to wait for them)."""
    from audit.cluster_jobs import describe, jobs_or_none

    jobs = jobs_or_none(os.getcwd(), list(config["audits"]))
    if jobs:
        raise RuntimeError(
            f"{len(jobs)} SLURM jobs of an earlier run of these audits are still queued or running in {os.getcwd()}: "
            f"{describe(jobs)}. Wait for them (python -m audit.cluster_jobs wait --directory . --configfile <config>) "
            "or cancel them (... cancel ...), then run the same command with --rerun-incomplete"
        )


def feature_index(wildcards):
    """The audit's FEATURE_INDEX, named once the listing checkpoint has run. reference_stats reads it and has a
    parameter from the listing: Snakemake compares a job's parameters in its first DAG pass, before the checkpoint,
    unless an input waits for the checkpoint, and the stale reason of that pass then reruns the job every time."""
    listing(wildcards)
    return FEATURE_INDEX.format(audit=wildcards.audit)


def write_shard_index(shards, path, log):
    """An index rule's output: ``shards`` (lists of shard paths by kind) as JSON, written atomically; ``log`` says how many."""
    from audit.storage import write_json  # on first use: parsing the workflow imports no xarray

    write_json(shards, path)
    Path(log).write_text("".join(f"{len(paths)} {kind} indexed in {path}\n" for kind, paths in shards.items()))


def training_image_shards(wildcards):
    """The image shards train_model reads: those it was trained on once it has been (a grown dataset adds shards to
    audit, not to train on: the model is trained once), else every shard; every shard again if one of the recorded
    ones has left the listing (a new dataset)."""
    record = Path(TRAINING_SHARDS.format(audit=wildcards.audit))
    current = image_shards(wildcards)
    if record.exists():
        trained_on = json.loads(record.read_text())["image_shards"]
        if set(trained_on) <= set(current):
            return trained_on
    return current


def image_shard_rejects(wildcards):
    return _shard_paths(wildcards, "results/{audit}/images/shard-{shard}.rejects.parquet")


def feature_shards(wildcards):
    return _shard_paths(wildcards, "results/{audit}/features/shard-{shard}.zarr")


def statistics_shards(wildcards):
    return _shard_paths(wildcards, "results/{audit}/statistics/shard-{shard}.zarr")


def shard_runtime(stage):
    """The ``runtime`` resource (minutes) of a shard job of ``stage`` (``ingest``, ``features``, ``statistics``,
    ``dataset_maps``): the shard's images at the audit's ``cluster`` rate for it (audit.cluster_time)."""

    def runtime(wildcards):
        settings = ClusterSettings.from_config(audit_config(wildcards)["cluster"])
        images = listing(wildcards).sizes[int(wildcards.shard)]
        rate = getattr(settings, f"{stage}_seconds_per_image")
        return shard_minutes(images, rate, overhead_minutes=settings.overhead_minutes, max_minutes=settings.max_minutes, stage=f"audit {wildcards.audit}, {stage}")

    return runtime


def shard_digest_param(wildcards):
    """The hash of the shard's images (ids, fingerprints): the shard is rebuilt exactly when it changes."""
    return listing(wildcards).rebuild[int(wildcards.shard)]


def shard_present_param(wildcards):
    """The hash of the shard's present images: its statistics are recomputed when one leaves the dataset."""
    return listing(wildcards).present[int(wildcards.shard)]


def present_param(wildcards):
    """The hash of every present image: rules that read the listing (ancient) rerun when the image set changes."""
    return listing(wildcards).all_present


def class_names(wildcards):
    return listing(wildcards).class_names


def image_size(wildcards):
    """The configured image side, else 64 for the digits, else None: check_model resolves it (timm's pretrained input size)."""
    dataset = audit_config(wildcards)["dataset"]
    if dataset["image_size"]:
        return dataset["image_size"]
    return 64 if dataset["source"] == "digits" else None


def all_reports():
    """What a run makes of every audit: its report and its per-image table."""
    return expand(["reports/{audit}.html", "results/{audit}/images.parquet"], audit=config["audits"])


def has_head(wildcards):
    return audit_config(wildcards)["model"]["head"]


def explain_methods(wildcards):
    """The configured explainers; a backbone without a classifier gets those that need no class logits."""
    methods = audit_config(wildcards)["explain"]["methods"]
    return [m for m in methods if has_head(wildcards) or not explainer(m).needs_head]


def metric_methods(wildcards):
    """The methods whose maps are scored (a backbone without a classifier gets the metrics that read maps alone)."""
    return explain_methods(wildcards)


def dataset_params(wildcards):
    return DatasetSettings.output_values(audit_config(wildcards)["dataset"])


def model_params(wildcards):
    return ModelSettings.output_values(audit_config(wildcards)["model"])


def feature_params(wildcards):
    return FeatureSettings.output_values(audit_config(wildcards)["features"])


def reference_params(wildcards):
    return ReferenceSettings.output_values(audit_config(wildcards)["reference"])


def plan_params(wildcards):
    """The explain settings that choose the plan's rows, with the methods that apply."""
    return {**ExplainSettings.output_values(audit_config(wildcards)["explain"], PLAN_KEYS), "methods": explain_methods(wildcards)}


def explain_params(wildcards):
    """The explain job's own settings and the parameters its methods declare (not the plan's, which reach it as its input)."""
    methods = explain_methods(wildcards)
    keys = set(JOB_KEYS).union(*(explainer(m).parameters for m in methods))
    return {**ExplainSettings.output_values(audit_config(wildcards)["explain"], keys), "methods": methods}


def dataset_methods(wildcards):
    """The configured dataset-map methods that apply (a backbone without a classifier keeps those that need no class logits)."""
    methods = audit_config(wildcards)["explain"]["dataset_methods"]
    return [m for m in methods if has_head(wildcards) or not explainer(m).needs_head]


def dataset_map_params(wildcards):
    """The settings that change a shard's dataset maps: the methods, the splits and the parameters the methods declare."""
    methods = dataset_methods(wildcards)
    keys = set(DATASET_KEYS).union(*(explainer(m).parameters for m in methods))
    return {**ExplainSettings.output_values(audit_config(wildcards)["explain"], keys), "dataset_methods": methods}


def dataset_map_shards(wildcards):
    return _shard_paths(wildcards, "results/{audit}/dataset_maps/shard-{shard}.zarr")


def mask_shards(wildcards):
    """The image shards when the dataset has object masks (for the strategies' outside-the-object shares), else none."""
    return image_shards(wildcards) if listing(wildcards).with_masks else []


def strategy_params(wildcards):
    """The strategies settings, with the clustered method resolved (null: the first dataset method that applies)."""
    settings = StrategySettings.output_values(audit_config(wildcards)["strategies"])
    return {**settings, "method": settings["method"] or dataset_methods(wildcards)[0]}


def local_params(wildcards):
    return LocalSettings.output_values(audit_config(wildcards)["local"])


def confirm_params(wildcards):
    return ConfirmSettings.output_values(audit_config(wildcards)["confirm"])


def confirm_part_paths(suffix):
    """The per-part outputs of confirm_shortcuts (``.parquet`` or ``.zarr``): one part per ``confirm.classes_per_job`` classes."""

    def paths(wildcards):
        per_job = audit_config(wildcards)["confirm"]["classes_per_job"]
        parts = -(-len(class_names(wildcards)) // per_job)
        return [f"results/{wildcards.audit}/shortcuts/part-{part:05d}{suffix}" for part in range(parts)]

    return paths


def confirm_part_classes(wildcards):
    """The class indices whose candidates one confirm_shortcuts job tests: ``classes_per_job`` consecutive classes."""
    per_job = audit_config(wildcards)["confirm"]["classes_per_job"]
    return list(range(int(wildcards.part) * per_job, min((int(wildcards.part) + 1) * per_job, len(class_names(wildcards)))))


def confirms_shortcuts(wildcards):
    """Whether the audit tests its shortcut candidates on the model: it maps every image and has a classifier."""
    return runs_dataset_maps(wildcards) and has_head(wildcards)


def runs_dataset_maps(wildcards):
    """Whether the audit maps every image (a non-empty explain.dataset_methods that applies to the model)."""
    return bool(dataset_methods(wildcards))


def dataset_splits(wildcards):
    """explain.dataset_splits: the splits the dataset maps cover (None: all)."""
    return audit_config(wildcards)["explain"].get("dataset_splits")


def samples_metrics(wildcards):
    """Whether the audit scores a sample of its dataset maps (dataset maps, a classifier, metrics.sample_per_class > 0)."""
    return runs_dataset_maps(wildcards) and has_head(wildcards) and audit_config(wildcards)["metrics"]["sample_per_class"] > 0


def sample_metric_shards(wildcards):
    return _shard_paths(wildcards, "results/{audit}/sample_metrics/shard-{shard}.parquet") if samples_metrics(wildcards) else []


def shard_sample_param(wildcards):
    """The digest of the shard's sampled image ids: its sample metrics rerun when its share of the sample changes."""
    metrics = audit_config(wildcards)["metrics"]
    digests = _sample_digests(*_listing_version(wildcards), metrics["sample_per_class"], metrics["seed"], _as_tuple(dataset_splits(wildcards)))
    return digests[int(wildcards.shard)]


def _as_tuple(values):
    return None if values is None else tuple(values)


@lru_cache(maxsize=16)
def _sample_digests(path, modified, per_class, seed, splits):
    """Every shard's sample digest, computed once per listing version and sample setting."""
    return shard_sample_digests(read_listing(path), per_class, seed, splits)


def map_outliers(wildcards):
    """The map outlier scores that the anomaly table takes in, when the audit maps every image."""
    return [f"results/{wildcards.audit}/map_outliers.parquet"] if runs_dataset_maps(wildcards) else []


SUMMARY_ONLY = {"bootstrap"}
"""metrics keys that change the summary's intervals, never a map's score."""
SAMPLE_ONLY = {"sample_per_class"}
"""metrics keys that choose which dataset maps are sampled, never how a map is scored."""


def metric_params(wildcards):
    """The metrics section's values that change the report subjects' scores."""
    return _metric_values(wildcards, SUMMARY_ONLY | SAMPLE_ONLY)


def sample_metric_params(wildcards):
    """The metrics section's values that change a shard's sampled scores: the scoring and the sample's size."""
    return _metric_values(wildcards, SUMMARY_ONLY)


def summary_params(wildcards):
    """The metrics section's values that change the summary: its bootstrap resamples and seed."""
    return MetricSettings.output_values(audit_config(wildcards)["metrics"], keys=SUMMARY_ONLY | {"seed"})


def _metric_values(wildcards, left_out):
    values = MetricSettings.output_values(audit_config(wildcards)["metrics"])
    return {key: value for key, value in values.items() if key not in left_out}
