"""Saliency explainers: Grad-CAM, Finer-CAM and DiffCAM, and their store."""
