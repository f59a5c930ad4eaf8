// The benchmark page (driven by bench.mjs): one engine at a time, the same model and the same
// token ids. prefine: web/pkg (single-threaded, SIMD128). ONNX Runtime Web: its wasm backend
// (SIMD; `threads` workers when > 1, which needs this page to be cross-origin isolated).
import init, { Prefine, kernelFamily } from "/web/pkg/prefine_wasm.js";
import * as ort from "/ort/ort.wasm.min.mjs";

const bytes = async (url) => {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
};

/** Seeded token ids in [1000, 30000) (the anchors' distribution), batch x seq. */
function tokenIds(batch, seq, seed = 0) {
  let s = BigInt(seed) + 0x9e3779b97f4a7c15n;
  const ids = new Uint32Array(batch * seq);
  for (let i = 0; i < ids.length; i++) {
    s = (s * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
    ids[i] = 1000 + Number((s >> 33n) % 29000n);
  }
  return ids;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Times `run` (synchronous or async): warm-up calls, then `timed` calls; median ms. */
async function time(run, warmup, timed) {
  for (let i = 0; i < warmup; i++) await run();
  const ms = [];
  for (let i = 0; i < timed; i++) {
    const t0 = performance.now();
    await run();
    ms.push(performance.now() - t0);
  }
  return { median_ms: median(ms), runs: ms.length };
}

let prefineEngine = null, prefineKey = null;
async function prefine(precision) {
  if (prefineKey !== precision) {
    await init({ module_or_path: "/web/pkg/prefine_wasm_bg.wasm" });
    prefineEngine?.free();
    const [c, t, w] = await Promise.all(["config.json", "tokenizer.json", "model.safetensors"].map((f) => bytes(`/model/${f}`)));
    prefineEngine = new Prefine(c, t, w);
    if (precision !== "f32") prefineEngine.setPrecision(precision);
    prefineKey = precision;
  }
  return prefineEngine;
}

let ortSession = null, ortKey = null;
async function onnx(precision, threads) {
  const key = `${precision}/${threads}`;
  if (ortKey !== key) {
    ort.env.wasm.wasmPaths = "/ort/";
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.simd = true;
    await ortSession?.release();
    const file = precision === "int8" ? "/onnx/minilm.int8.onnx" : "/onnx/minilm.onnx";
    ortSession = await ort.InferenceSession.create(await bytes(file), {
      executionProviders: ["wasm"], graphOptimizationLevel: "all",
    });
    ortKey = key;
  }
  return ortSession;
}

/** One measurement: {engine, precision, threads, batch, seq, warmup, timed}. */
window.bench = async (c) => {
  const ids = tokenIds(c.batch, c.seq);
  if (c.engine === "prefine") {
    const engine = await prefine(c.precision);
    const out = engine.hiddenStates(ids, c.batch, c.seq);
    const r = await time(() => engine.hiddenStates(ids, c.batch, c.seq), c.warmup, c.timed);
    return { ...r, kernels: kernelFamily(), first: Array.from(out.slice(0, 4)), sample: Array.from(out.slice(0, 384 * c.seq)) };
  }
  const session = await onnx(c.precision, c.threads);
  const n = c.batch * c.seq;
  const feeds = {
    input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [c.batch, c.seq]),
    attention_mask: new ort.Tensor("int64", new BigInt64Array(n).fill(1n), [c.batch, c.seq]),
    token_type_ids: new ort.Tensor("int64", new BigInt64Array(n), [c.batch, c.seq]),
  };
  const out = (await session.run(feeds)).last_hidden_state.data;
  const r = await time(() => session.run(feeds), c.warmup, c.timed);
  return { ...r, first: Array.from(out.slice(0, 4)), sample: Array.from(out.slice(0, 384 * c.seq)) };
};
window.isolated = () => self.crossOriginIsolated;
document.getElementById("status").textContent = "ready";
