"""Datasets in LViT's layout, the built-in synthetic dataset and precomputed text embeddings."""
