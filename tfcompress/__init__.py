"""tfcompress: make trained Keras models small and fast for edge devices."""

__version__ = "0.1.0"
