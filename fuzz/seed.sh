#!/usr/bin/env bash
# Builds the starting corpora fuzz/corpus/<target>/ (not committed) from the bad-input catalogue,
# the example configs and the committed regression inputs. Every fuzz input starts with one
# selector byte (see each target); the seeds are written once per selector value.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")"
root=..
bi=$root/tests/bad_inputs
seed() { # target selector file
    local dir=corpus/$1
    mkdir -p "$dir"
    { printf "\\x$(printf %02x "$2")"; cat "$3"; } > "$dir/seed-$2-$(basename "$3")"
}
for f in "$bi"/conll/* "$bi"/valid/*.conll; do
    for s in 0 1 2 4 6 8; do seed conll $s "$f"; done
done
for f in "$bi"/jsonl/* "$bi"/valid/*.jsonl; do
    mkdir -p corpus/jsonl && cp "$f" "corpus/jsonl/seed-$(basename "$f")"
done
for f in "$bi"/csv/*.csv; do seed csv 0 "$f"; done
for f in "$bi"/csv/*.tsv; do seed csv 1 "$f"; done
for f in "$bi"/toml/finetune_*; do seed config 0 "$f"; done
for f in "$bi"/toml/pretrain_*; do seed config 1 "$f"; done
for f in "$root"/configs/*.toml; do seed config 2 "$f"; done
for d in "$bi"/adapter/*/; do
    mkdir -p corpus/adapter_config
    for s in 0 1; do
        { printf "\\x0$s"; cat "$d/adapter_config.json"; } > "corpus/adapter_config/seed-$s-$(basename "$d").json"
    done
done
mkdir -p corpus/http_request
printf '\x00{"adapter":"conll","texts":["Barack Obama visited Paris."]}' > corpus/http_request/seed-predict
printf '\x01{"adapter":"x","texts":["a","bb  b","\\u00e9\\ud83d\\ude00"]}' > corpus/http_request/seed-predict-small
printf '\x02{"name":"conll-2","path":"runs/conll"}' > corpus/http_request/seed-add
# Everything found so far.
for d in regressions/*/; do
    t=$(basename "$d")
    mkdir -p "corpus/$t"
    cp "$d"* "corpus/$t/" 2>/dev/null || true
done
mkdir -p corpus/http_head
printf 'GET /health HTTP/1.1\r\nhost: x\r\n\r\n' > corpus/http_head/seed-get
printf 'POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{"adapter":"a","texts":["hello world"]}\n' > corpus/http_head/seed-post
printf 'DELETE /v1/adapters/a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n' > corpus/http_head/seed-chunked
