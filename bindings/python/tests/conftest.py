"""Shared fixtures: the repository, the default model, the shared reference data, a loaded
backbone and two small adapters trained through the Python API (a few dozen rows, one epoch)."""

import json
import os
import pathlib
import subprocess

import pytest

import prefine

ROOT = pathlib.Path(__file__).resolve().parents[3]
MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
SHARED = pathlib.Path(os.environ.get("PREFINE_SHARED", ROOT.parent / "shared"))
DATA = pathlib.Path(os.environ.get("PREFINE_DATA", SHARED / "data"))


def read_conll(path, limit):
    """The first `limit` sentences of a CoNLL file as `datasets`-style rows (string tags)."""
    rows, tokens, tags = [], [], []
    for line in open(path, encoding="utf-8"):
        parts = line.split()
        if not parts:
            if tokens:
                rows.append({"tokens": tokens, "ner_tags": tags})
                tokens, tags = [], []
                if len(rows) == limit:
                    break
            continue
        if parts[0] == "-DOCSTART-":
            continue
        tokens.append(parts[0])
        tags.append(parts[-1])
    return rows


def read_jsonl(path, limit):
    rows = []
    for line in open(path, encoding="utf-8"):
        if line.strip():
            rows.append(json.loads(line))
        if len(rows) == limit:
            break
    return rows


@pytest.fixture(scope="session")
def model_dir():
    # A missing model is a failure, never a skip (scripts/setup.sh installs it).
    assert (MODEL / "model.safetensors").is_file(), f"{MODEL} is missing: run ./scripts/setup.sh"
    return MODEL


@pytest.fixture(scope="session")
def backbone(model_dir):
    return prefine.Backbone.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def ner_adapter(tmp_path_factory, model_dir):
    """A LoRA NER adapter trained from Python lists (conll2003 rows)."""
    out = tmp_path_factory.mktemp("ner-lora")
    conll = DATA / "ner" / "conll2003"
    data = {
        "train": read_conll(conll / "train.conll", 48),
        "validation": read_conll(conll / "dev.conll", 16),
    }
    metrics = prefine.finetune(
        data, out, task="ner", mode="lora", model=model_dir,
        epochs=1, batch_size=16, max_length=64, stride=16, lr=1e-3, seed=3,
    )
    return out, metrics


@pytest.fixture(scope="session")
def tc_adapter(tmp_path_factory, model_dir):
    """A head-mode TC adapter trained from Python lists (sst2 rows)."""
    out = tmp_path_factory.mktemp("tc-head")
    sst2 = DATA / "tc" / "sst2"
    data = {
        "train": read_jsonl(sst2 / "train.jsonl", 48),
        "validation": read_jsonl(sst2 / "dev.jsonl", 16),
        "test": read_jsonl(sst2 / "test.jsonl", 16),
    }
    metrics = prefine.finetune(
        data, out, task="tc", mode="head", model=model_dir, epochs=2, batch_size=16, seed=3,
    )
    return out, metrics


def cli_binary():
    """The `prefine` binary: $PREFINE_BIN, else target/debug (built by `cargo test`), else
    built now."""
    if os.environ.get("PREFINE_BIN"):
        return pathlib.Path(os.environ["PREFINE_BIN"])
    for profile in ("debug", "release"):
        b = ROOT / "target" / profile / "prefine"
        if b.is_file():
            return b
    subprocess.run(["cargo", "build", "-q", "-p", "prefine-cli"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "prefine"
