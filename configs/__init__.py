"""Experiment configs: each file defines `get_config(variant)` (ml_collections), loaded with `--config=configs/X.py[:variant]`."""
