"""Imports one of ../shared/bench's anchor scripts as a module (for the anchor variants here)."""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load_anchor(filename):
    """The module `filename` of ../shared/bench next to the repository, or ANCHOR_SCRIPT."""
    path = os.environ.get(
        "ANCHOR_SCRIPT", os.path.join(HERE, "..", "..", "shared", "bench", filename)
    )
    spec = importlib.util.spec_from_file_location(os.path.splitext(filename)[0], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
