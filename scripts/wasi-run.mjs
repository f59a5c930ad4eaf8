// Runs a wasm32-wasip1 program (a `cargo test` binary) under Node.js's WASI: the cargo runner
// of scripts/test-wasm.sh. Usage: node wasi-run.mjs PROGRAM.wasm [ARGS...]; exits with the
// program's status.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [program, ...args] = argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [program, ...args], env, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(program));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
