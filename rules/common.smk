# Input functions, wildcard constraints and shared lists.
from audit.data.dataset import image_count, shard_ranges
from audit.models.imported import pretrained_image_size

wildcard_constraints:
    audit="[A-Za-z0-9][A-Za-z0-9_.-]*",
    shard=r"\d{5}",


def audit_config(wildcards):
    """The validated configuration of one audit."""
    return config["audits"][wildcards.audit]


def model_checkpoint(wildcards):
    """The audit's model: imported from the configured checkpoint, else trained by the workflow."""
    kind = "imported" if audit_config(wildcards)["model"].get("checkpoint") else "trained"
    return f"results/{wildcards.audit}/model/{kind}.pt"


def dataset_inputs(wildcards):
    """The manifest file, so that editing it reruns the ingest (ImageFolder trees are listed at run time)."""
    dataset = audit_config(wildcards)["dataset"]
    return [dataset["path"]] if dataset["source"] == "manifest" else []


def audit_shard_ranges(wildcards):
    """[start, stop) image ranges of the audit's feature shards; their number follows from the ingested image count."""
    images = checkpoints.ingest.get(audit=wildcards.audit).output.images
    return shard_ranges(image_count(images), audit_config(wildcards)["features"]["shard_size"])


def feature_shards(wildcards):
    """The audit's feature shard stores."""
    return [f"results/{wildcards.audit}/features/shard-{shard:05d}.zarr" for shard in range(len(audit_shard_ranges(wildcards)))]


def shard_range(wildcards):
    """[start, stop) of this shard's images."""
    return audit_shard_ranges(wildcards)[int(wildcards.shard)]


def image_size(wildcards):
    """The store's image side: configured, else 64 for the digits, else the timm model's pretrained input size."""
    dataset = audit_config(wildcards)["dataset"]
    if dataset["image_size"]:
        return dataset["image_size"]
    return 64 if dataset["source"] == "digits" else pretrained_image_size(audit_config(wildcards)["model"]["name"])


def all_reports():
    return expand("reports/{audit}.html", audit=config["audits"])


def has_head(wildcards):
    return audit_config(wildcards)["model"]["head"]


def explain_methods(wildcards):
    """The configured explainers; a backbone without a classifier gets the gradient-free DiffCAM only."""
    methods = audit_config(wildcards)["explain"]["methods"]
    return methods if has_head(wildcards) else [m for m in methods if m == "diffcam"]


def metric_methods(wildcards):
    """The methods whose maps are scored: the metrics score class probabilities, so none without a classifier."""
    return explain_methods(wildcards) if has_head(wildcards) else []
