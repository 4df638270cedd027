"""featinv: map a vision model's features back to images.

Implements FeatInv (a ControlNet on a frozen diffusion model, conditioned on a classifier's last
spatial feature map) and modular feature inversion, as a Snakemake + DVC pipeline.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from featinv import FeatInvPipeline`` without importing torch and diffusers at ``import featinv``."""
    if name == "FeatInvPipeline":
        # importlib, not an import statement: every module imports the package, and a static import
        # here would put the pipeline (torch, diffusers) into every verb's code dependencies (codedeps).
        import importlib

        return importlib.import_module("featinv.diffusion.pipeline").FeatInvPipeline
    raise AttributeError(f"module 'featinv' has no attribute '{name}'")
