"""The training API: data as Python rows or a directory, settings as keywords with the TOML
files' validation, errors naming the key, the file and line or the row, Ctrl-C."""

import json
import signal
import threading
import _thread

import pytest

import prefine
from conftest import DATA, read_conll

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
ROWS = [
    {"tokens": ["Barack", "Obama", "visited", "Paris", "."], "ner_tags": [1, 2, 0, 3, 0]},
    {"tokens": ["Angela", "Merkel", "lives", "in", "Berlin"], "ner_tags": [1, 2, 0, 0, 3]},
    {"tokens": ["Rome", "is", "old"], "ner_tags": [3, 0, 0]},
    {"tokens": ["Ask", "John", "Smith"], "ner_tags": [0, 1, 2]},
]

STR_ROWS = [{"tokens": r["tokens"], "ner_tags": [TAGS[t] for t in r["ner_tags"]]} for r in ROWS]


def small(**kw):
    base = dict(epochs=1, batch_size=4, max_length=32, stride=8)
    base.update(kw)
    return base


def test_ner_results_and_outputs(ner_adapter):
    out, metrics = ner_adapter
    assert set(metrics) >= {"dev", "test", "best_epoch", "train_seconds", "wall_seconds"}
    assert 0.0 <= metrics["dev"]["f1"] <= 1.0
    for f in ("adapter.json", "labels.json", "head.safetensors", "adapter_config.json",
              "adapter_model.safetensors", "config.toml", "metrics.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "metrics.json").read_text())["dev"] == metrics["dev"]
    assert 'mode = "lora"' in (out / "config.toml").read_text()


def test_tc_results(tc_adapter):
    _, metrics = tc_adapter
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_int_tags_with_label_names(tmp_path, model_dir):
    m = prefine.finetune(
        {"train": ROWS, "dev": ROWS[:2]}, tmp_path, task="ner", mode="head", model=model_dir,
        label_names=TAGS, **small(),
    )
    # ints are mapped to names; the adapter's class order is the trainer's (O, then B-/I- per
    # type, sorted), as for files
    assert json.loads((tmp_path / "labels.json").read_text()) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert m["test"] is None


def test_directory_data_and_a_config_file(tmp_path, model_dir):
    cfg = tmp_path / "ft.toml"
    cfg.write_text('task = "tc"\nmode = "head"\nepochs = 5\n')
    m = prefine.finetune(
        DATA / "tc" / "trec6", tmp_path / "out", config=cfg, model=model_dir,
        epochs=1, max_train=32, max_eval=16, batch_size=16,
    )
    assert m["best_epoch"] == 1  # the keyword overrides the file
    assert "epochs = 1" in (tmp_path / "out" / "config.toml").read_text()


def test_config_errors_name_the_key(tmp_path, model_dir):
    rows = {"train": ROWS, "dev": ROWS}
    with pytest.raises(prefine.ConfigError, match="epoch") as e:
        prefine.finetune(rows, tmp_path, task="ner", mode="head", label_names=TAGS, epoch=1)
    assert e.value.key == "epoch"
    with pytest.raises(prefine.ConfigError, match="epochs") as e:
        prefine.finetune(rows, tmp_path, task="ner", mode="head", label_names=TAGS, epochs=0)
    assert e.value.key == "epochs"
    with pytest.raises(prefine.ConfigError, match="lr"):
        prefine.finetune(rows, tmp_path, task="ner", mode="head", label_names=TAGS, lr="fast")
    with pytest.raises(prefine.ConfigError, match="rank"):
        prefine.finetune(rows, tmp_path, task="ner", mode="lora", label_names=TAGS,
                         lora={"rank": "eight"})
    with pytest.raises(prefine.ConfigError, match="task"):
        prefine.finetune(rows, tmp_path, mode="head")
    with pytest.raises(prefine.ConfigError, match="unknown variant"):
        prefine.finetune(rows, tmp_path, task="pos", mode="head")
    with pytest.raises(prefine.ConfigError, match="label_names"):
        prefine.finetune(DATA / "tc" / "sst2", tmp_path, task="tc", mode="head", label_names=["a"])
    with pytest.raises(prefine.ConfigError, match="strategy"):
        prefine.pretrain(tmp_path)
    with pytest.raises(prefine.ConfigError, match="max_steps"):
        prefine.pretrain(tmp_path, strategy="tpl", max_steps="many")
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "ner"\nmode = "head"\n\nepochs = "three"\n')
    with pytest.raises(prefine.ConfigError, match=r"bad.toml line 4"):
        prefine.finetune(rows, tmp_path, config=bad, label_names=TAGS)


def test_data_errors_name_the_row(tmp_path):
    def run(train, **kw):
        return prefine.finetune({"train": train, "dev": ROWS}, tmp_path, task="ner",
                                mode="head", label_names=TAGS, **kw)

    with pytest.raises(prefine.DataError, match=r'data\["train"\]\[1\]: 5 tokens but 4') as e:
        run([ROWS[0], {"tokens": ROWS[1]["tokens"], "ner_tags": [0, 0, 0, 0]}])
    assert (e.value.split, e.value.row) == ("train", 1)
    with pytest.raises(prefine.DataError, match=r'data\["train"\]\[2\].*X-PER') as e:
        prefine.finetune(
            {"train": STR_ROWS[:2] + [{"tokens": ["a", "b"], "ner_tags": ["O", "X-PER"]}],
             "dev": STR_ROWS[:1]},
            tmp_path, task="ner", mode="head",
        )
    assert e.value.row == 2
    with pytest.raises(prefine.DataError, match="label_names"):
        prefine.finetune({"train": ROWS, "dev": ROWS}, tmp_path, task="ner", mode="head")
    with pytest.raises(prefine.DataError, match="not an index"):
        run([{"tokens": ["a"], "ner_tags": [9]}])
    with pytest.raises(prefine.DataError, match='no "tokens"'):
        run([{"text": "a"}])
    with pytest.raises(prefine.DataError, match='"dev" or "validation"'):
        prefine.finetune({"train": ROWS}, tmp_path, task="ner", mode="head", label_names=TAGS)
    with pytest.raises(prefine.DataError, match=r'data\["train"\]\[0\].*text'):
        prefine.finetune({"train": [{"text": "   ", "label": "a"}], "dev": [{"text": "b", "label": "a"}]},
                         tmp_path, task="tc", mode="head")


def test_file_errors_name_the_file_and_line(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad"}\n')
    (d / "dev.jsonl").write_text('{"text": "good", "label": "pos"}\n')
    with pytest.raises(prefine.DataError, match=r"train.jsonl:2") as e:
        prefine.finetune(d, tmp_path / "out", task="tc", mode="head")
    assert e.value.line == 2 and e.value.path.endswith("train.jsonl")


def test_ctrl_c_writes_a_checkpoint_and_raises_keyboard_interrupt(tmp_path, model_dir):
    rows = read_conll(DATA / "ner" / "conll2003" / "train.conll", 32)
    out = tmp_path / "run"
    # A process started in the background (`cmd &` without job control) inherits SIGINT
    # ignored, and then Python neither installs its handler nor delivers interrupt_main: put
    # Python's handler in place, as in an interactive session.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt, match="checkpoint written"):
            prefine.finetune({"train": rows, "dev": rows[:8]}, out, task="ner", mode="lora",
                             model=model_dir, epochs=50, batch_size=8, max_length=48, stride=8)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    steps = list((out / "checkpoints").glob("step-*"))
    assert steps, "no checkpoint written"
    # the stop request does not leak into the next run
    m = prefine.finetune({"train": ROWS, "dev": ROWS}, tmp_path / "next", task="ner",
                         mode="head", model=model_dir, label_names=TAGS, **small())
    assert m["best_epoch"] == 1


def test_pretrain_then_zero_shot_from_its_output(tmp_path, model_dir):
    out = tmp_path / "tpl"
    r = prefine.pretrain(out, strategy="tpl", model=model_dir, data=DATA, max_steps=2,
                         ner_batch_size=4, tc_batch_size=4)
    assert r["steps"] == 2 and set(r["last_loss"]) == {"ner", "tc"}
    for f in ("backbone/model.safetensors", "adapters/ner/adapter_config.json", "zero_shot.json",
              "config.toml"):
        assert (out / f).is_file(), f
    b = prefine.Backbone.from_pretrained(out)
    ents = b.predict(["Ursula K. Le Guin wrote A Wizard of Earthsea."],
                     entity_types=["person", "book title"], threshold=0.0)
    assert len(ents) == 1 and ents[0], "threshold 0 tags every word"
    tc = b.predict("a lovely film", labels=["positive", "negative"], top_k=None)
    assert sorted(d["label"] for d in tc) == ["negative", "positive"]
