"""ttm-experiments: Hydra-composed fine-tuning experiments for TinyTimeMixer on PPG signals."""

__version__ = "0.1.0"
