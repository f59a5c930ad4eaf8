// Drives bench.html in headless Chromium: prefine's wasm runtime and ONNX Runtime Web on the
// same model and token ids, alternated for ROUNDS rounds; prints one JSON line per row and a
// markdown table. Usage: node bench.mjs WEB_DIR MODEL_DIR ONNX_DIR OUT_JSON (run by
// scripts/bench-web.sh).
import { createServer } from "node:http";
import { readFile, writeFile } from "node:fs/promises";
import { join, normalize, extname, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const here = dirname(fileURLToPath(import.meta.url));
const [webDir, modelDir, onnxDir, outJson] = process.argv.slice(2);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const QUICK = process.env.BENCH_QUICK === "1";
const WORKLOADS = [
  { workload: "infer_b1", batch: 1, seq: 32, warmup: 5, timed: 50 },
  { workload: "infer_b32", batch: 32, seq: 128, warmup: 2, timed: 10 },
];
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json", ".wasm": "application/wasm" };
const ROUTES = [["/web/", webDir], ["/ort/", join(here, "node_modules/onnxruntime-web/dist")], ["/onnx/", onnxDir], ["/model/", modelDir], ["/", here]];

const server = createServer(async (req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const [prefix, root] = ROUTES.find(([p]) => path.startsWith(p));
  const file = normalize(join(root, path.slice(prefix.length) || "bench.html"));
  // Cross-origin isolation: ONNX Runtime Web may use wasm threads (SharedArrayBuffer).
  const headers = { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" };
  try {
    const body = await readFile(file);
    res.writeHead(200, { ...headers, "content-type": TYPES[extname(file)] ?? "application/octet-stream" }).end(body);
  } catch {
    res.writeHead(404, headers).end();
  }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const page = await browser.newPage();
page.on("pageerror", (e) => console.error("page error:", e));
page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") console.error("page:", m.text()); });
await page.goto(`http://127.0.0.1:${server.address().port}/bench.html`);
await page.waitForFunction(() => typeof window.bench === "function");
const isolated = await page.evaluate(() => window.isolated());
const agent = await page.evaluate(() => navigator.userAgent);
console.error(`bench-web: ${agent}; cross-origin isolated: ${isolated}`);

const engines = [
  { engine: "prefine", threads: 1 },
  { engine: "onnxruntime-web", threads: 1 },
  { engine: "onnxruntime-web", threads: 2 },
];
const results = new Map();
for (let round = 0; round < (QUICK ? 1 : ROUNDS); round++) {
  for (const w of WORKLOADS) {
    for (const precision of ["f32", "int8"]) {
      const samples = {};
      for (const e of engines) {
        const c = { ...w, ...e, precision, ...(QUICK ? { warmup: 1, timed: 2 } : {}) };
        const r = await page.evaluate((c) => window.bench(c), c);
        const key = `${w.workload}/${precision}/${e.engine}/${e.threads}`;
        (results.get(key) ?? results.set(key, { ...c, medians: [] }).get(key)).medians.push(r.median_ms);
        samples[e.engine] = r.sample;
        console.error(`round ${round + 1} ${key}: ${r.median_ms.toFixed(2)} ms`);
      }
      // Both engines compute the same thing: the first sequence's hidden states agree.
      const a = samples["prefine"], b = samples["onnxruntime-web"];
      const diff = a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
      const key = `${w.workload}/${precision}`;
      results.set(`diff/${key}`, Math.max(results.get(`diff/${key}`) ?? 0, diff));
    }
  }
}
await browser.close();
server.close();

const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const rows = [];
for (const w of WORKLOADS) for (const precision of ["f32", "int8"]) {
  const p = results.get(`${w.workload}/${precision}/prefine/1`);
  for (const threads of [1, 2]) {
    const o = results.get(`${w.workload}/${precision}/onnxruntime-web/${threads}`);
    const pm = med(p.medians), om = med(o.medians);
    rows.push({ workload: w.workload, batch: w.batch, seq: w.seq, precision, prefine_threads: 1, ort_threads: threads,
      prefine_ms: +pm.toFixed(3), ort_web_ms: +om.toFixed(3), speedup: +(om / pm).toFixed(3),
      prefine_tokens_per_s: Math.round(w.batch * w.seq / pm * 1000), ort_tokens_per_s: Math.round(w.batch * w.seq / om * 1000),
      max_abs_diff_first_sequence: results.get(`diff/${w.workload}/${precision}`), rounds: p.medians.length });
  }
}
await writeFile(outJson, JSON.stringify({ agent, isolated, rows }, null, 1));
console.log("| workload | precision | ORT Web threads | prefine ms | ORT Web ms | prefine / ORT Web (speed) | max abs diff |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) {
  console.log(`| ${r.workload} (${r.batch}x${r.seq}) | ${r.precision} | ${r.ort_threads} | ${r.prefine_ms} | ${r.ort_web_ms} | ${r.speedup}x | ${r.max_abs_diff_first_sequence.toExponential(1)} |`);
}
