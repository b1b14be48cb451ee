"""Runs: training a preset into a run folder, resuming it, and reopening a finished one. Above
the data, model, feature and training layers; below the tuner, the experiment tables and the
command line."""
