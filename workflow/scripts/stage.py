"""Shared by the rule scripts (Snakemake puts this folder on their path): a stage's typed settings.

A rule's ``params.settings`` holds the values of its config section that change
its output; the speed-only values (batch sizes, workers) are read from the
config itself, so changing them reruns nothing. A rule that reads another
section's values passes them as their own param (e.g. ``params.explain``), built
with the section's ``output_values`` and read back here as typed settings.
Settings are partial: a field the rule did not pass raises when read
(:class:`audit.settings.SettingNotPassed`).
"""
from audit.settings import StageSettings


def _section(snakemake, path: tuple[str, ...]) -> dict:
    values = snakemake.config["audits"][snakemake.wildcards.audit]
    for key in path:
        values = values[key]
    return values


def stage_settings(snakemake, cls: type[StageSettings], *section: str, param: str = "settings") -> StageSettings:
    """``cls`` from the rule's ``params.<param>`` and the speed-only values of the audit's config ``section`` (a key path)."""
    return cls.from_config(getattr(snakemake.params, param), speed=_section(snakemake, section), partial=True)


def config_settings(snakemake, cls: type[StageSettings], *section: str) -> StageSettings:
    """``cls`` from the audit's config ``section`` itself, not the rule's params: for values that never change the
    rule's output (speed-only ones, how much is read at a time), so that editing them reruns nothing."""
    return cls.from_config(_section(snakemake, section))
