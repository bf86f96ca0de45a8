"""Inference: the annotator and criticizer backends and their prompt strategies."""
