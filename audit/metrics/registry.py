"""The registry of metrics: every metric the workflow computes, by name (``metrics.metrics`` in the config).

Adding a metric is one :class:`~audit.metrics.metric.Metric` entry (its
outputs with direction, conventions and headline, its forwards per map and its
computation) in a module and one line here. The config schema's list is
checked against this registry by a test.
"""
from __future__ import annotations

from audit.metrics.faithfulness import FAITHFULNESS
from audit.metrics.map_metrics import MAP_METRICS
from audit.metrics.metric import Metric, Output

METRICS: dict[str, Metric] = {m.name: m for m in (*FAITHFULNESS, *MAP_METRICS)}


def metric(name: str) -> Metric:
    """The metric called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def outputs() -> dict[str, Output]:
    """Every output of every metric, by the ``metric`` column's value."""
    return {o.name: o for m in METRICS.values() for o in m.outputs}


def ranking_output() -> Output:
    """The headline the report's summary ranks methods by (the one output with ``ranks_methods``)."""
    (ranking,) = [o for o in outputs().values() if o.ranks_methods]
    return ranking


def checks() -> list[Output]:
    """The outputs that a method fails above a limit (``fails_above``), in registry order."""
    return [o for o in outputs().values() if o.fails_above is not None]
