"""Datasets, graders and step segmentation for reasoning chains."""
