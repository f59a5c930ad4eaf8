#!/usr/bin/env python3
"""bf16 anchor: the PyTorch anchor's workloads under CPU bf16 autocast.

Usage (same venv and MODEL_DIR as ../shared/bench/pytorch_anchor.py):
    python scripts/pytorch_bf16_anchor.py <train_full|train_lora|infer_b1|infer_b32>
        -> framework "pytorch-bf16"

Everything (model, inputs, timing, threads, JSON line) is the anchor's, imported from
ANCHOR_SCRIPT (default ../shared/bench/pytorch_anchor.py next to the repository); the only change
is that each run executes inside torch.autocast("cpu", dtype=torch.bfloat16): matmuls in bf16,
weights, optimizer state and reductions in f32 (PyTorch's mixed precision). One JSON line on
stdout; diagnostics on stderr.
"""
import json
import statistics
import sys

from shared_anchor import load_anchor


def main():
    anchor = load_anchor("pytorch_anchor.py")
    torch = anchor.torch
    if len(sys.argv) != 2 or sys.argv[1] not in anchor.WORKLOADS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    workload = sys.argv[1]
    warmup, steps, batch, seq = anchor.WORKLOADS[workload]
    if anchor.QUICK:
        warmup, steps = 1, 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if workload.startswith("train"):
            times = anchor.run_train(workload, warmup, steps, batch, seq)
        else:
            times = anchor.run_infer(workload, warmup, steps, batch, seq)
    med = statistics.median(times)
    res = {
        "framework": "pytorch-bf16",
        "workload": workload,
        "tokens_per_s": round(batch * seq / med, 2),
        "step_ms_median": round(med * 1000.0, 3),
        "peak_rss_mb": round(anchor.peak_rss_mb(), 1),
        "batch": batch,
        "seq_len": seq,
        "warmup": warmup,
        "timed_steps": steps,
        "threads": torch.get_num_threads(),
        "quick": anchor.QUICK,
        "precision": "bf16-autocast",
    }
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
