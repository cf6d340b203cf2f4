"""Datasets: procedural scenes, task items, real-dataset loaders and on-disk splits."""
