// The demo page: loads bundle/ (built by scripts/build-web.sh), then runs the NER and the
// emotion adapter on the text, showing entities, class scores and the latency of each call.
import { loadBundle } from "./loader.js";

const $ = (id) => document.getElementById(id);
const status = $("status");
let calls = 0;

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** Calls `f` and returns its result with the wall time in milliseconds. */
function timed(f) {
  const t0 = performance.now();
  const value = f();
  return { value, ms: performance.now() - t0 };
}

function logCall(adapter, ms) {
  const row = document.createElement("tr");
  row.innerHTML = `<td>#${++calls}</td><td>${adapter}</td><td>${ms.toFixed(1)} ms</td>`;
  $("calls").tBodies[0].prepend(row);
}

function showEntities(text, prediction) {
  // Offsets count code points (as `prefine predict`), so index the text as code points.
  const chars = Array.from(text);
  let html = "", at = 0;
  for (const e of prediction.entities) {
    html += escapeHtml(chars.slice(at, e.start).join(""));
    const cls = /^[A-Z]+$/.test(e.type) ? e.type : "";
    html += `<mark class="${cls}">${escapeHtml(chars.slice(e.start, e.end).join(""))}` +
      `<span class="tag">${escapeHtml(e.type)} ${e.score.toFixed(2)}</span></mark>`;
    at = e.end;
  }
  html += escapeHtml(chars.slice(at).join(""));
  $("entities").innerHTML = html;
  $("entity-list").innerHTML = prediction.entities
    .map((e) => `<li>${escapeHtml(e.text)} — ${escapeHtml(e.type)} (${e.score.toFixed(3)}, chars ${e.start}–${e.end})</li>`)
    .join("");
}

function showClasses(prediction) {
  const rows = Object.entries(prediction.scores).sort((a, b) => b[1] - a[1]);
  $("classes").innerHTML = rows
    .map(([label, p]) => `<div class="row${label === prediction.label ? " best" : ""}">` +
      `<span class="name">${escapeHtml(label)}</span><div><div class="bar" style="width:${(100 * p).toFixed(1)}%"></div></div>` +
      `<span>${(100 * p).toFixed(1)}%</span></div>`)
    .join("");
}

async function main() {
  const t0 = performance.now();
  const { engine, manifest, kernels } = await loadBundle("bundle/");
  const loadMs = performance.now() - t0;
  const ner = manifest.adapters.find((a) => a.task === "ner")?.name;
  const tc = manifest.adapters.find((a) => a.task === "tc")?.name;
  status.textContent = `Backbone ${manifest.precision} (${(manifest.total_bytes / 2 ** 20).toFixed(1)} MiB bundle) ` +
    `loaded in ${loadMs.toFixed(0)} ms · adapters: ${manifest.adapters.map((a) => `${a.name} (${a.task})`).join(", ")} · kernels: ${kernels}`;

  function analyse(text) {
    const out = {};
    if (ner) {
      const { value, ms } = timed(() => engine.predict(ner, [text], "simple"));
      out.ner = value[0];
      $("ner-latency").textContent = `${ms.toFixed(1)} ms`;
      logCall(ner, ms);
      showEntities(text, value[0]);
    }
    if (tc) {
      const { value, ms } = timed(() => engine.predict(tc, [text]));
      out.tc = value[0];
      $("tc-latency").textContent = `${ms.toFixed(1)} ms`;
      logCall(tc, ms);
      showClasses(value[0]);
    }
    return out;
  }

  const run = () => {
    const text = $("text").value;
    if (!text.trim()) return;
    try {
      analyse(text);
      status.classList.remove("error");
    } catch (e) {
      status.textContent = String(e.message ?? e);
      status.classList.add("error");
    }
  };
  $("run").disabled = false;
  $("run").addEventListener("click", run);
  $("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) run(); });
  window.prefineDemo = { engine, manifest, analyse };
  run();
}

window.prefineReady = main().catch((e) => {
  status.textContent = `Could not start: ${e.message ?? e}`;
  status.classList.add("error");
  throw e;
});
