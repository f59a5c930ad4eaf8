"""Interop: PEFT adapters written by Python's peft give transformers' logits; embeddings equal
sentence-transformers (PyTorch) within 1e-4; an adapter trained through the Python API predicts
what the CLI predicts."""

import json
import subprocess

import numpy as np
import pytest

import prefine
from conftest import SHARED, cli_binary

FIXTURES = SHARED / "reference" / "peft_fixtures"


def expected():
    return json.loads((FIXTURES / "expected_logits.json").read_text())


def test_peft_token_cls_fixture_gives_the_expected_logits(backbone):
    ref = expected()
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    info = backbone.load_adapter("peft-tok", FIXTURES / "token_cls", labels=labels)
    try:
        assert info["task"] == "ner" and info["has_lora"] and info["labels"] == labels
        got = backbone.logits(ref["texts"], "peft-tok")
        want = np.array(ref["token_cls"]["logits"], dtype=np.float32)
        for i, mask in enumerate(ref["attention_mask"]):
            n = sum(mask)
            assert got[i].shape == (n, len(labels))
            np.testing.assert_allclose(got[i], want[i, :n], atol=1e-4, rtol=0)
    finally:
        backbone.unload_adapter("peft-tok")


def test_peft_seq_cls_fixture_gives_the_expected_logits(backbone):
    ref = expected()
    backbone.load_adapter("peft-seq", FIXTURES / "seq_cls", labels=["a", "b", "c"])
    try:
        got = backbone.logits(ref["texts"], "peft-seq")
        assert got.dtype == np.float32 and got.shape == (2, 3)
        np.testing.assert_allclose(got, np.array(ref["seq_cls"]["logits"]), atol=1e-4, rtol=0)
        # predict's scores are the softmax of those logits
        scores = backbone.predict(ref["texts"], "peft-seq", top_k=None)
        for row, logits in zip(scores, got):
            p = np.exp(logits - logits.max())
            p /= p.sum()
            by_label = {d["label"]: d["score"] for d in row}
            np.testing.assert_allclose([by_label[k] for k in "abc"], p, atol=1e-5)
    finally:
        backbone.unload_adapter("peft-seq")


def test_embeddings_equal_pytorch_within_1e_4(backbone):
    ref = json.loads((SHARED / "reference" / "minilm_l6_hello_world.json").read_text())
    # sentence-transformers: mean pooling over the attention mask, then L2 normalisation
    h = np.array(ref["last_hidden_state"], dtype=np.float64)[0]
    mask = np.array(ref["attention_mask"][0], dtype=np.float64)[:, None]
    want = (h * mask).sum(0) / mask.sum()
    want /= np.linalg.norm(want)
    got = backbone.embed("hello world")
    assert got.dtype == np.float32 and got.shape == (384,)
    assert np.abs(got - want).max() <= 1e-4
    batch = backbone.embed(["hello world", "another text"])
    assert batch.shape == (2, 384)
    assert np.abs(batch[0] - want).max() <= 1e-4


TEXTS = [
    "Barack Obama visited Paris in 2015.",
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "EU rejects German call to boycott British lamb.",
]


def cli_predict(adapter_dir, texts, *extra):
    out = subprocess.run(
        [str(cli_binary()), "predict", "--adapter", str(adapter_dir), *extra, *texts],
        check=True, capture_output=True, text=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_python_trained_ner_adapter_predicts_as_the_cli(backbone, ner_adapter):
    out, _ = ner_adapter
    backbone.load_adapter("py-ner", out)
    try:
        for strategy in ("first", "simple"):
            py = backbone.predict(TEXTS, "py-ner", aggregation_strategy=strategy)
            cli = cli_predict(out, TEXTS, "--aggregation-strategy", strategy)
            assert len(py) == len(cli) == len(TEXTS)
            for p, c in zip(py, cli):
                assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in p] == [
                    (e["type"], e["start"], e["end"], e["text"]) for e in c["entities"]
                ]
                for e, f in zip(p, c["entities"]):
                    assert abs(e["score"] - f["score"]) <= 1e-5
    finally:
        backbone.unload_adapter("py-ner")


def test_python_trained_tc_adapter_predicts_as_the_cli(backbone, tc_adapter):
    out, _ = tc_adapter
    backbone.load_adapter("py-tc", out)
    try:
        texts = ["a gripping, funny and moving film", "dull and far too long"]
        py = backbone.predict(texts, "py-tc", top_k=None)
        cli = cli_predict(out, texts)
        for p, c in zip(py, cli):
            assert p[0]["label"] == c["label"]
            assert {d["label"]: d["score"] for d in p} == pytest.approx(c["scores"], abs=1e-5)
    finally:
        backbone.unload_adapter("py-tc")


def test_an_export_bundle_loads_with_its_adapters(backbone, tc_adapter, tmp_path, model_dir):
    out, _ = tc_adapter
    bundle = tmp_path / "bundle"
    subprocess.run([str(cli_binary()), "export", "--model", str(model_dir),
                    "--adapter", f"sst2={out}", "--out", str(bundle)],
                   check=True, capture_output=True)
    b = prefine.Backbone.from_pretrained(bundle)
    assert b.adapters == ["sst2"] and b.precision == "f32"
    backbone.load_adapter("sst2-dir", out)
    try:
        texts = ["a gripping, funny film", "dull"]
        got = b.predict(texts, top_k=None)
        want = backbone.predict(texts, "sst2-dir", top_k=None)
        for g, w in zip(got, want):
            assert [d["label"] for d in g] == [d["label"] for d in w]
            np.testing.assert_allclose([d["score"] for d in g], [d["score"] for d in w], atol=1e-6)
    finally:
        backbone.unload_adapter("sst2-dir")
    with pytest.raises(prefine.ModelError, match="bundle"):
        b.predict("x", entity_types=["person"])
