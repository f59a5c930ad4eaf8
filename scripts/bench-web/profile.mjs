// Where prefine's wasm time goes, in Node.js (the V8 of Chromium): times the backbone on token
// ids, or summarises a CPU profile by function (self time).
//   node scripts/bench-web/profile.mjs f32|int8 BATCH SEQ [RUNS]           # mean ms per call
//   node --cpu-prof --cpu-prof-dir=/tmp/p scripts/bench-web/profile.mjs f32 32 128 1
//   node scripts/bench-web/profile.mjs --summarize /tmp/p                  # top functions
// Uses web/pkg (scripts/build-web.sh) and models/all-MiniLM-L6-v2.
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../", import.meta.url));
const args = process.argv.slice(2);
if (args[0] === "--summarize") {
  const dir = args[1];
  const file = (await readdir(dir)).find((f) => f.endsWith(".cpuprofile"));
  const p = JSON.parse(await readFile(join(dir, file), "utf8"));
  const names = new Map(p.nodes.map((n) => [n.id, n.callFrame.functionName || n.callFrame.url]));
  const self = new Map();
  p.samples.forEach((id, i) => self.set(names.get(id), (self.get(names.get(id)) ?? 0) + p.timeDeltas[i]));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  for (const [name, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 15)) {
    console.log(`${((100 * t) / total).toFixed(1).padStart(5)}% ${name.slice(0, 110)}`);
  }
} else {
  const { initSync, Prefine, kernelFamily } = await import(join(root, "web/pkg/prefine_wasm.js"));
  initSync({ module: await readFile(join(root, "web/pkg/prefine_wasm_bg.wasm")) });
  const m = join(root, "models/all-MiniLM-L6-v2");
  const read = (f) => readFile(join(m, f));
  const engine = new Prefine(await read("config.json"), await read("tokenizer.json"), await read("model.safetensors"));
  const [precision, batch, seq, runs] = [args[0] ?? "f32", Number(args[1] ?? 32), Number(args[2] ?? 128), Number(args[3] ?? 3)];
  if (precision !== "f32") engine.setPrecision(precision);
  const ids = new Uint32Array(batch * seq).map((_, i) => 1000 + ((i * 7919) % 29000));
  engine.hiddenStates(ids, batch, seq);
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) engine.hiddenStates(ids, batch, seq);
  console.log(`${kernelFamily()} ${precision} ${batch}x${seq}: ${((performance.now() - t0) / runs).toFixed(1)} ms per call`);
}
