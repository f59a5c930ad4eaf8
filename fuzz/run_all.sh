#!/usr/bin/env bash
# Runs the fuzz targets one after the other, each for 10 minutes on one core at low priority,
# as recorded in docs/RELIABILITY.md (Fuzzing). Usage: fuzz/run_all.sh [target...]
# Logs: fuzz/logs/<target>.log (not committed); crashes: fuzz/artifacts/<target>/.
set -uo pipefail
cd "$(dirname "$0")"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(conll jsonl csv config adapter_config http_request http_head)
mkdir -p logs
./seed.sh
for t in "${targets[@]}"; do
    start=$(date +%s)
    nice -n 10 cargo +nightly fuzz run --sanitizer none "$t" "corpus/$t" -- \
        -max_total_time=600 -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -timeout=10 -print_final_stats=1 > "logs/$t.log" 2>&1
    rc=$?
    echo "$t rc=$rc wall_s=$(( $(date +%s) - start ))" | tee -a logs/summary.txt
done
