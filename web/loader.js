// Loads prefine's WebAssembly runtime and a backbone with its adapters from a static server.
//
//   import { loadBundle } from "./loader.js";
//   const { engine, manifest } = await loadBundle("bundle/");   // a `prefine export` bundle
//   engine.predict("ner", ["Angela Merkel met Emmanuel Macron in Paris."]);
//
// Every file of a bundle is checked against the sha256 its manifest lists before it is used.
import init, { Prefine, kernelFamily } from "./pkg/prefine_wasm.js";

let ready = null;

/** Instantiates the wasm module once (it is fetched from ./pkg/). */
export function initRuntime() {
  ready ??= init({ module_or_path: new URL("./pkg/prefine_wasm_bg.wasm", import.meta.url) });
  return ready;
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Fetches one file of a bundle and checks its size and sha256 against the manifest. */
async function bundleFile(base, manifest, path) {
  const entry = manifest.files.find((f) => f.path === path);
  if (!entry) throw new Error(`bundle ${base}: manifest.json lists no file ${path}`);
  const bytes = await fetchBytes(new URL(path, base));
  if (bytes.length !== entry.bytes) {
    throw new Error(`bundle ${base}: ${path} has ${bytes.length} bytes, the manifest says ${entry.bytes}`);
  }
  const hash = await sha256Hex(bytes);
  if (hash !== entry.sha256) throw new Error(`bundle ${base}: ${path} fails its sha256 check`);
  return bytes;
}

/** The files of a bundle's adapter, by file name. */
async function adapterFiles(base, manifest, adapter) {
  const prefix = adapter.path.endsWith("/") ? adapter.path : adapter.path + "/";
  const files = {};
  for (const f of manifest.files.filter((f) => f.path.startsWith(prefix))) {
    files[f.path.slice(prefix.length)] = await bundleFile(base, manifest, f.path);
  }
  return files;
}

/**
 * Loads a `prefine export` bundle: its backbone (f32 or int8) and every adapter it lists.
 * `options.backbone` (a model directory URL) replaces the bundle's backbone, e.g. the f32 model
 * behind an int8 bundle; `options.precision` quantises an f32 backbone after loading.
 */
export async function loadBundle(url, options = {}) {
  await initRuntime();
  const base = new URL(url, document.baseURI);
  const manifest = await (await fetch(new URL("manifest.json", base))).json();
  let engine;
  if (options.backbone) {
    engine = await loadBackbone(options.backbone);
  } else {
    const dir = manifest.backbone.endsWith("/") ? manifest.backbone : manifest.backbone + "/";
    const [config, tokenizer, weights] = await Promise.all(
      ["config.json", "tokenizer.json", "model.safetensors"].map((f) => bundleFile(base, manifest, dir + f)),
    );
    engine = new Prefine(config, tokenizer, weights);
  }
  if (options.precision) engine.setPrecision(options.precision);
  for (const adapter of manifest.adapters) {
    engine.registerAdapter(adapter.name, await adapterFiles(base, manifest, adapter));
  }
  return { engine, manifest, kernels: kernelFamily() };
}

/** Loads a plain model directory (config.json, tokenizer.json, model.safetensors). */
export async function loadBackbone(url) {
  await initRuntime();
  const base = new URL(url.endsWith("/") ? url : url + "/", document.baseURI);
  const [config, tokenizer, weights] = await Promise.all(
    ["config.json", "tokenizer.json", "model.safetensors"].map((f) => fetchBytes(new URL(f, base))),
  );
  return new Prefine(config, tokenizer, weights);
}

export { Prefine, kernelFamily };
