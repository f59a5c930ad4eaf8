"""The inference API: result shapes (transformers pipelines), errors as exceptions, zero-shot,
precisions, and the GIL released while computing."""

import threading
import time

import numpy as np
import pytest

import prefine
from conftest import ROOT


def test_ner_shapes_follow_the_token_classification_pipeline(backbone, ner_adapter):
    out, _ = ner_adapter
    backbone.load_adapter("shape-ner", out)
    try:
        text = "Barack Obama visited Paris in 2015."
        one = backbone.predict(text, "shape-ner", aggregation_strategy="simple")
        assert isinstance(one, list)
        for e in one:
            assert set(e) == {"entity_group", "score", "word", "start", "end"}
            assert text[e["start"]:e["end"]] == e["word"]
            assert 0.0 <= e["score"] <= 1.0
        many = backbone.predict([text, "ok"], "shape-ner")
        assert isinstance(many, list) and len(many) == 2 and isinstance(many[0], list)
        for e in backbone.predict(text, "shape-ner", aggregation_strategy="none"):
            assert "entity" in e and e["entity"][:2] in ("B-", "I-")
        # the only adapter loaded is the default
        assert backbone.adapters == ["shape-ner"]
        assert backbone.predict(text) == backbone.predict(text, "shape-ner")
    finally:
        backbone.unload_adapter("shape-ner")
    assert backbone.adapters == []


def test_tc_shapes_follow_the_text_classification_pipeline(backbone, tc_adapter):
    out, _ = tc_adapter
    backbone.load_adapter("shape-tc", out)
    try:
        one = backbone.predict("a fine film", "shape-tc")
        assert set(one) == {"label", "score"} and one["label"] in ("negative", "positive")
        many = backbone.predict(["a fine film", "awful"], "shape-tc")
        assert [set(d) for d in many] == [{"label", "score"}] * 2
        every = backbone.predict("a fine film", "shape-tc", top_k=None)
        assert [d["label"] for d in every][0] == one["label"] and len(every) == 2
        assert abs(sum(d["score"] for d in every) - 1.0) < 1e-5
        assert every[0]["score"] >= every[1]["score"]
        info = backbone.adapter_info("shape-tc")
        assert info["task"] == "tc" and info["mode"] == "head"
    finally:
        backbone.unload_adapter("shape-tc")


def test_errors_are_python_exceptions(backbone, tmp_path, model_dir):
    with pytest.raises(prefine.AdapterError, match="unknown adapter"):
        backbone.predict("hello", "nope")
    with pytest.raises(prefine.AdapterError):
        backbone.unload_adapter("nope")
    with pytest.raises(prefine.AdapterError, match="not a directory"):
        backbone.load_adapter("x", tmp_path / "missing")
    with pytest.raises(prefine.InputError, match="adapter name"):
        backbone.load_adapter("bad name!", tmp_path)
    with pytest.raises(prefine.ModelError):
        prefine.Backbone.from_pretrained(tmp_path)
    with pytest.raises(prefine.ConfigError, match="precision"):
        prefine.Backbone.from_pretrained(model_dir, precision="fp8")
    with pytest.raises(prefine.InputError, match="empty"):
        backbone.embed(["fine", "  "])
    with pytest.raises(prefine.InputError, match="no adapter loaded"):
        backbone.predict("hello")
    with pytest.raises(TypeError):
        backbone.embed(42)
    with pytest.raises(ValueError, match="aggregation_strategy"):
        backbone.predict("x", "a", aggregation_strategy="mean")
    assert issubclass(prefine.DataError, prefine.PrefineError)


def test_zero_shot_from_a_model_directory(backbone):
    # A plain model directory gives the base-model baseline (a pretrain output the trained one).
    ents = backbone.predict(
        "Ursula Le Guin wrote books in Portland.", entity_types=["person", "city"], threshold=0.1
    )
    assert isinstance(ents, list)
    for e in ents:
        assert e["entity_group"] in ("person", "city")
    res = backbone.predict(["I love it", "I hate it"], labels="positive, negative")
    assert [set(r) for r in res] == [{"label", "score"}] * 2
    with pytest.raises(ValueError):
        backbone.predict("x", entity_types=["a"], labels=["b"])


@pytest.mark.parametrize("precision,tol", [("bf16", 2e-2), ("int8", 3e-2)])
def test_quantised_backbones_embed_close_to_f32(backbone, model_dir, precision, tol):
    q = prefine.Backbone.from_pretrained(model_dir, precision=precision)
    assert q.precision == precision
    texts = ["hello world", "the quick brown fox"]
    assert np.abs(q.embed(texts) - backbone.embed(texts)).max() <= tol


def test_the_gil_is_released_while_computing(backbone):
    import sys

    texts = ["a sentence of some length to embed, repeated for work"] * 64
    backbone.embed(texts[:2])  # warm
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    # A long switch interval: a call that kept the GIL would leave the counter at a standstill.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.2)
    try:
        t = threading.Thread(target=count)
        t.start()
        time.sleep(0.01)
        before = ticks[0]
        backbone.embed(texts)
        during = ticks[0] - before
        stop.set()
        t.join()
    finally:
        sys.setswitchinterval(interval)
    assert during > 1000, during


def test_type_stubs_ship_with_the_package():
    import pathlib

    pkg = pathlib.Path(prefine.__file__).parent
    assert (pkg / "py.typed").is_file()
    stub = (pkg / "__init__.pyi").read_text()
    for name in ("class Backbone", "def finetune", "def pretrain", "class DataError"):
        assert name in stub
    assert ROOT.is_dir()
