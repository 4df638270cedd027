"""featinv: map a vision model's features back to images.

Implements FeatInv (a ControlNet on a frozen diffusion model, conditioned on a classifier's last
spatial feature map) and modular feature inversion, as a Snakemake + DVC pipeline.
"""

__version__ = "0.1.0"
