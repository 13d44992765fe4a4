"""noisytail: train image classifiers on long-tailed, noisily labelled data."""

__version__ = "0.1.0"
