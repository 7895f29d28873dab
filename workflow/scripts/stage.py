"""Shared by the rule scripts (Snakemake puts this folder on their path): a stage's typed settings.

A rule's ``params.settings`` holds the values of its config section that change
its output; the speed-only values (batch sizes, workers) are read from the
config itself, so changing them reruns nothing.
"""
from audit.settings import StageSettings


def stage_settings(snakemake, cls: type[StageSettings], *section: str) -> StageSettings:
    """``cls`` from ``snakemake.params.settings`` and the speed-only values of the audit's config ``section`` (a key path)."""
    values = snakemake.config["audits"][snakemake.wildcards.audit]
    for key in section:
        values = values[key]
    return cls.from_config(snakemake.params.settings, speed=values)


def dask_setting(snakemake) -> str:
    """The audit's ``dask.scheduler`` (speed-only: read from the config, not the rule's params)."""
    return snakemake.config["audits"][snakemake.wildcards.audit]["dask"]["scheduler"]
