# Input functions, wildcard constraints and shared lists.

EXPLAIN_METHODS = ["gradcam", "finercam", "diffcam"]


wildcard_constraints:
    audit="[A-Za-z0-9][A-Za-z0-9_.-]*",
    method="|".join(EXPLAIN_METHODS),


def audit_config(wildcards):
    """The validated configuration of one audit."""
    return config["audits"][wildcards.audit]


def all_reports():
    return expand("reports/{audit}.html", audit=config["audits"])


def saliency_stores(wildcards):
    return expand("results/{audit}/saliency/{method}.zarr", audit=wildcards.audit, method=EXPLAIN_METHODS)


def metric_tables(wildcards):
    return expand("results/{audit}/metrics/{method}.parquet", audit=wildcards.audit, method=EXPLAIN_METHODS)
