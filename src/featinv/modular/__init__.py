"""Modular feature inversion (the second paper): forward models as ordered processing stages, and
per-stage inverse networks chained back to the image."""


def __getattr__(name: str):
    """``from featinv.modular import ModularInversion``, imported on first use (importlib, so that the
    modular verbs' code dependencies do not include it; see ``featinv.__getattr__``)."""
    if name == "ModularInversion":
        import importlib

        return importlib.import_module("featinv.modular.inversion").ModularInversion
    raise AttributeError(f"module 'featinv.modular' has no attribute '{name}'")
