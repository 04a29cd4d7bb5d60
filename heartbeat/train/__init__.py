"""Stage 2: split, fit a recipe, write the run. Importing this package imports nothing (cli reads heartbeat.train.settings before torch loads)."""
