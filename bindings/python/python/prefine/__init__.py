"""prefine: one shared encoder backbone for NER and text classification, many adapters.

A Rust core (candle + prefine's own CPU kernels) with a thin Python layer:

- ``Backbone.from_pretrained(path, precision="f32")``: a Hugging Face model directory, a
  ``prefine pretrain`` output or a ``prefine export`` bundle; ``load_adapter`` /
  ``unload_adapter``; ``predict`` (transformers pipeline shapes, zero-shot with
  ``entity_types=`` / ``labels=``); ``embed`` (float32 numpy arrays); ``logits``.
- ``finetune(data, out, task=..., mode=..., **config)`` and
  ``pretrain(out, strategy=..., **config)``: the keys of the TOML config files as keyword
  arguments; Ctrl-C writes a checkpoint and raises ``KeyboardInterrupt``.
- Errors: ``PrefineError`` and its subclasses ``ConfigError``, ``DataError``,
  ``AdapterError``, ``ModelError``, ``InputError``, ``FileError``, ``TrainingError``.
"""

from ._prefine import (
    AdapterError,
    Backbone,
    ConfigError,
    DataError,
    FileError,
    InputError,
    ModelError,
    PrefineError,
    TrainingError,
    __version__,
    finetune,
    pretrain,
)

__all__ = [
    "Backbone",
    "finetune",
    "pretrain",
    "PrefineError",
    "ConfigError",
    "DataError",
    "AdapterError",
    "ModelError",
    "InputError",
    "FileError",
    "TrainingError",
    "__version__",
]
