"""HRSAM / HRSAM++: high-resolution interactive segmentation (PyTorch package)."""

__version__ = "0.1.0"
