"""The paper's analyses: mutual information between towers, gate heatmaps, training curves."""
