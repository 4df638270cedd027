"""Feature extraction into zarr stores, and reading them back."""
