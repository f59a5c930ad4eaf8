#!/usr/bin/env python3
"""PyTorch side of `scripts/bench_scaling.sh`: forward-only timing of the default model at one
(batch, sequence length), measured like ../shared/bench/pytorch_anchor.py's inference workloads
(BertModel without pooler, eval, inference_mode, 2 threads, random ids in [1000, 30000), mask all
ones; warm-up runs, then the median of the timed runs). Prints one JSON line.

Usage: python pytorch_infer_scaling.py BATCH SEQ [WARMUP TIMED]   (MODEL_DIR: model directory)
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertModel  # noqa: E402


def main():
    batch, seq = int(sys.argv[1]), int(sys.argv[2])
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    timed = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = BertModel.from_pretrained(
        os.environ.get("MODEL_DIR", "models/all-MiniLM-L6-v2"),
        add_pooling_layer=False,
        attn_implementation="eager",
    ).eval()
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        input_ids=torch.randint(1000, 30000, (batch, seq), generator=g, dtype=torch.long),
        attention_mask=torch.ones(batch, seq, dtype=torch.long),
        token_type_ids=torch.zeros(batch, seq, dtype=torch.long),
    )
    times = []
    with torch.inference_mode():
        for i in range(warmup + timed):
            t0 = time.perf_counter()
            model(**inputs)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({
        "framework": "pytorch",
        "workload": "infer",
        "batch": batch,
        "seq_len": seq,
        "step_ms_median": round(med * 1000, 3),
        "tokens_per_s": round(batch * seq / med, 2),
    }))


if __name__ == "__main__":
    main()
