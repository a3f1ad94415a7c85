"""Datasets: the LJSpeech-format reader, splits, and the dataset manager."""
