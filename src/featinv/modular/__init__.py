"""Modular feature inversion (the second paper): forward models as ordered processing stages, and
per-stage inverse networks chained back to the image."""
