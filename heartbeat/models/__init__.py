"""Package data: the bundled model (builtin/), written by scripts/release_model.py and read by heartbeat.bundled."""
