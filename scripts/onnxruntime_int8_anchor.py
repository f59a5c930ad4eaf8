#!/usr/bin/env python3
"""int8 anchor: ONNX Runtime dynamic quantisation of the ONNX Runtime anchor's MiniLM.

Usage (same venv, same BENCH_OUT and MODEL_DIR as ../shared/bench/onnxruntime_anchor.py, whose
`export` must have run first):
    python scripts/onnxruntime_int8_anchor.py <infer_b1|infer_b32> [--opt]
        -> framework "onnxruntime-int8" (or "onnxruntime-opt-int8": the fused model, quantised)

The model is quantised once with onnxruntime.quantization.quantize_dynamic (int8 weights per
output channel, like prefine's; activations quantised dynamically as uint8; MatMul nodes only)
into BENCH_OUT/minilm[_opt].int8.onnx. Timing, inputs, threads (2) and the JSON line follow the
anchor script, which is imported from ANCHOR_SCRIPT (default ../shared/bench/onnxruntime_anchor.py
next to the repository). One JSON line on stdout; diagnostics on stderr.
"""
import json
import os
import statistics
import sys
import time

from shared_anchor import load_anchor


def main():
    argv = sys.argv[1:]
    use_opt = "--opt" in argv
    argv = [a for a in argv if a != "--opt"]
    anchor = load_anchor("onnxruntime_anchor.py")
    if len(argv) != 1 or argv[0] not in anchor.WORKLOADS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    workload = argv[0]
    src = anchor.ONNX_OPT_PATH if use_opt else anchor.ONNX_PATH
    if not os.path.exists(src):
        anchor.log(f"{src} is missing: run `onnxruntime_anchor.py export` first")
        sys.exit(1)
    dst = src[: -len(".onnx")] + ".int8.onnx"
    if not os.path.exists(dst):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            # the fused graph (--opt) has com.microsoft ops that shape inference cannot type
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        anchor.log(f"wrote {dst} ({os.path.getsize(dst) / 1e6:.1f} MB)")
    sess = anchor.make_session(dst)
    anchor.parity_check(sess)  # int8 is not expected to pass the 1e-4 f32 check: shows the error

    warmup, steps, batch, seq = anchor.WORKLOADS[workload]
    if anchor.QUICK:
        warmup, steps = 1, 2
    feed = anchor.make_inputs(batch, seq)
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    import onnxruntime as ort

    print(
        json.dumps(
            {
                "framework": "onnxruntime-opt-int8" if use_opt else "onnxruntime-int8",
                "workload": workload,
                "tokens_per_s": round(batch * seq / med, 2),
                "step_ms_median": round(med * 1000.0, 3),
                "peak_rss_mb": round(anchor.peak_rss_mb(), 1),
                "batch": batch,
                "seq_len": seq,
                "warmup": warmup,
                "timed_steps": steps,
                "threads": anchor.THREADS,
                "ort_version": ort.__version__,
                "quick": anchor.QUICK,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
