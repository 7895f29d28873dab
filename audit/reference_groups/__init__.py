"""Reference groups: the per-class and complement Gaussians of embeddings that DiffCAM and the anomaly scores use.

``gaussian`` holds the shrinkage maths, ``store`` the sufficient statistics and ``reference.zarr`` (spill, combine,
write, open), ``leave_one_out`` each class without one of its members.
"""
