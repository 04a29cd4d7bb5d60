"""heartbeat: classify PASCAL Dataset B heart-sound recordings from mel-spectrogram images."""

__version__ = "0.1.0"
