#!/usr/bin/env bash
# Load test of `prefine serve` under adapter churn, with the server's memory sampled:
# starts the server on loopback with 4 adapters (2 NER, 2 TC) from ADAPTERS_DIR, runs
# `examples/load_test` against it as a separate process, then stops the server with SIGTERM.
#
#   scripts/serve_load_test.sh ADAPTERS_DIR [CLIENTS] [SECONDS] [PORT]
#
# ADAPTERS_DIR must hold the finetune outputs ner1 ner2 tc1 tc2 (see docs/RELIABILITY.md).
# The result is one JSON line on stdout; the exit status is non-zero on any failed request.
set -euo pipefail
dir=$(realpath "$1"); clients=${2:-64}; seconds=${3:-60}; port=${4:-18080}
bin=./target/release/prefine
lt=./target/release/examples/load_test
[[ -x $bin && -x $lt ]] || { echo "build first: cargo build --release -p prefine-cli && cargo build --release -p prefine-serve --example load_test" >&2; exit 2; }
"$bin" serve --host 127.0.0.1 --port "$port" --adapters-dir "$dir" \
  --adapter ner1="$dir/ner1" --adapter ner2="$dir/ner2" --adapter tc1="$dir/tc1" --adapter tc2="$dir/tc2" \
  --max-batch 64 --max-wait-ms 5 2> "${TMPDIR:-/tmp}/serve_load_test.server.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
  sleep 0.1
done
status=0
"$lt" "http://127.0.0.1:$port" ner1,ner2,tc1,tc2 "$clients" "$seconds" \
  --churn ner1,tc1 --churn-names 4 --churn-clients 4 --churn-pause-ms 100 --pid "$server" || status=$?
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^prefine_(batch_requests_count|batch_texts_sum|adapters) ' >&2 || true
kill -TERM "$server"
wait "$server" || { echo "server exited with $?" >&2; status=1; }
trap - EXIT
exit $status
