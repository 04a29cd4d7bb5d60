"""Stage 1: recordings in any layout -> audio -> spectrogram windows and their manifest. Imports no torch."""
