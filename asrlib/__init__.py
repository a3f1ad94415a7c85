"""asrlib: training and inference for speech recognition, the core of the ASR workbench."""

__version__ = "0.1.0"
