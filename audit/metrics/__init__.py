"""Faithfulness metrics of saliency maps."""
