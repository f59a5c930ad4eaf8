"""Type stubs of the prefine package (the native module `prefine._prefine`)."""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "os.PathLike[str]"]
_Names = Union[Sequence[str], str]

class PrefineError(Exception):
    """Base class of every error raised by prefine."""

class ConfigError(PrefineError):
    """An invalid setting."""

    key: str

class DataError(PrefineError):
    """Unusable training data: `path` and `line` for files, `split` and `row` for Python rows."""

    path: Optional[str]
    line: Optional[int]
    split: Optional[str]
    row: Optional[int]

class AdapterError(PrefineError):
    """An adapter that cannot be loaded, or an unknown adapter name."""

class ModelError(PrefineError):
    """A backbone, bundle or tokenizer that cannot be loaded."""

class InputError(PrefineError):
    """A request that cannot be served as sent (empty text, bad adapter name, ...)."""

class FileError(PrefineError):
    """A file that cannot be read or written."""

    path: str

class TrainingError(PrefineError):
    """A training run that cannot go on (non-finite loss or gradient)."""

Entity = Dict[str, Any]
"""`{"entity_group": str, "score": float, "word": str, "start": int, "end": int}`
(`"entity"` instead of `"entity_group"` with `aggregation_strategy="none"`)."""

Label = Dict[str, Any]
"""`{"label": str, "score": float}`."""

AdapterInfo = Dict[str, Any]
"""`{"name", "task", "mode", "has_lora", "labels", "max_length", "stride", "path",
"lora_parameters"}`."""

class Backbone:
    """A backbone loaded once with named adapters; every call releases the GIL."""

    @staticmethod
    def from_pretrained(
        path: _Path, precision: Optional[str] = None, *, max_batch_rows: Optional[int] = None
    ) -> "Backbone":
        """Loads a Hugging Face model directory, a `prefine pretrain` output or a
        `prefine export` bundle. `precision`: "f32", "bf16" or "int8" (default: f32, or a
        bundle's own)."""
    def load_adapter(
        self, name: str, path: _Path, *, labels: Optional[Sequence[str]] = None
    ) -> AdapterInfo:
        """Registers a `prefine finetune` output or a PEFT LoRA adapter (TOKEN_CLS / SEQ_CLS,
        with a labels.json or `labels=`)."""
    def unload_adapter(self, name: str) -> None: ...
    @property
    def adapters(self) -> List[str]: ...
    def adapter_info(self, name: str) -> AdapterInfo: ...
    @property
    def precision(self) -> str: ...
    @property
    def embedding_dim(self) -> int: ...
    @property
    def path(self) -> "os.PathLike[str]":
        """The path it was loaded from (a `pathlib.Path`)."""
    @overload
    def predict(
        self,
        texts: str,
        adapter: Optional[str] = None,
        *,
        aggregation_strategy: str = "first",
        top_k: Optional[int] = 1,
        entity_types: Optional[_Names] = None,
        labels: Optional[_Names] = None,
        template: Optional[str] = None,
        threshold: Optional[float] = None,
    ) -> Any: ...
    @overload
    def predict(
        self,
        texts: Sequence[str],
        adapter: Optional[str] = None,
        *,
        aggregation_strategy: str = "first",
        top_k: Optional[int] = 1,
        entity_types: Optional[_Names] = None,
        labels: Optional[_Names] = None,
        template: Optional[str] = None,
        threshold: Optional[float] = None,
    ) -> List[Any]:
        """NER: a list of `Entity` per text; TC: a `Label` per text (a list of them, best
        first, with `top_k=None` or k > 1). A str gives one result, a list a list.
        Aggregation strategies: "first" (default), "simple", "average", "max", "none"."""
    @overload
    def embed(self, texts: str, adapter: Optional[str] = None) -> npt.NDArray[np.float32]: ...
    @overload
    def embed(
        self, texts: Sequence[str], adapter: Optional[str] = None
    ) -> npt.NDArray[np.float32]:
        """Sentence embeddings (mean pooling, L2-normalised): `[n, embedding_dim]` float32
        (`[embedding_dim]` for one str)."""
    def logits(self, texts: Union[str, Sequence[str]], adapter: str) -> Any:
        """Head outputs before the softmax: TC `[n, classes]`; NER a list of
        `[subwords, classes]` arrays (special tokens included)."""

Rows = Mapping[str, Sequence[Mapping[str, Any]]]
"""`{"train": [...], "validation" (or "dev"): [...], "test": [...]}` with rows
`{"tokens": [...], "ner_tags": [...]}` (NER) or `{"text": ..., "label": ...}` (TC)."""

def finetune(
    data: Union[_Path, Rows],
    out: _Path,
    *,
    task: Optional[str] = None,
    mode: Optional[str] = None,
    model: Optional[_Path] = None,
    config: Optional[_Path] = None,
    label_names: Optional[Sequence[str]] = None,
    resume: bool = False,
    **settings: Any,
) -> Dict[str, Any]:
    """Fine-tunes an application (`prefine finetune`); any `FinetuneConfig` key as a keyword
    (`epochs=3, lr=5e-4, lora={"rank": 8}`). Returns the metrics
    (`{"dev", "test", "best_epoch", "train_seconds", "wall_seconds"}`)."""

def pretrain(
    out: _Path,
    *,
    strategy: Optional[str] = None,
    model: Optional[_Path] = None,
    data: Optional[_Path] = None,
    config: Optional[_Path] = None,
    resume: bool = False,
    **settings: Any,
) -> Dict[str, Any]:
    """Pre-finetunes the shared backbone (`prefine pretrain`); any `PretrainConfig` key as a
    keyword. Returns `{"steps", "seconds", "last_loss", "mean_conflict", "out"}`."""
