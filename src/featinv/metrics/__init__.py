"""Reconstruction metrics: feature similarity, prediction match, Fréchet distance, pairwise MSE."""
