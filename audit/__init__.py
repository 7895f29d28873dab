"""Dataset-scale saliency audits of image classifiers.

The library is pure over arrays and stores; it knows nothing about Snakemake.
Stages: ``data`` (ingest), ``models`` (build, train, checkpoints), ``features``
(activations, embeddings, logits), ``reference`` (group statistics), ``similarity``
(class pairs), ``anomaly`` (intra-class scores), ``explain`` (saliency maps),
``metrics`` (faithfulness) and ``report`` (HTML).
"""
