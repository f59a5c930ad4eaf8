#!/usr/bin/env bash
# Issue 27's one-factor ablations at 300 pre-finetuning steps, scored on DEV splits only.
# Resumable: re-running the same command skips finished pre-finetuning runs (done.json),
# resumes an interrupted one from its checkpoint (at most checkpoint_every = 50 steps lost),
# and the suite skips every downstream cell already in results.jsonl.
#
#   scripts/experiments/issue27/run.sh                 # every variant, in the order below
#   scripts/experiments/issue27/run.sh tpl tpl_k6      # just these
#
# Environment: PREFINE_BIN (default /work/bin-science/prefine, a release build), RUNS (default
# /work/runs-science), THREADS (default 1), MODEL (default <repo>/models/all-MiniLM-L6-v2).
# Everything runs under `nice -n 19`, one process at a time.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
BIN=${PREFINE_BIN:-/work/bin-science/prefine}
RUNS=${RUNS:-/work/runs-science}
THREADS=${THREADS:-1}
MODEL=${MODEL:-$REPO/models/all-MiniLM-L6-v2}
# Most informative first: references, the bf16 check, then the factors of "why TPL trails
# NER-PFT on NER", then the rest of the grid and the PCGrad references.
ORDER=(base tpl tpl_bf16 ner tpl_bb_ner tpl_k6 tpl_k4 tpl_r64 tpl_r4 tpl_lr2e-5 tpl_lr1e-4
  tpl_alr2e-3 tpl_bb_tc tpl_bb_none tpl_T1 tpl_rr tpl_wner2 tpl_pairs1 tpl_pairs0
  tpl_frozen_other naive tc naive_pcgrad tpl_pcgrad)
TASKS='"ner/conll2003", "ner/wnut17", "ner/bc5cdr", "ner/crossner_politics", "tc/sst2", "tc/banking77", "tc/trec6", "tc/emotion"'
SEEDS=${SEEDS:-13}

prefine() { nice -n 19 "$BIN" --threads "$THREADS" "$@"; }
mkdir -p "$RUNS/cfg" "$RUNS/pt" "$RUNS/log"
[ $# -gt 0 ] && ORDER=("$@")
for v in "${ORDER[@]}"; do
  if [ "$v" = base ]; then
    path=$MODEL
  else
    out=$RUNS/pt/$v
    path=$out
    if [ ! -f "$out/done.json" ]; then
      cfg=$RUNS/cfg/$v.toml
      cat "$HERE/common.toml" "$HERE/variants/$v.toml" > "$cfg"
      resume=()
      [ -f "$out/checkpoint/state.json" ] && resume=(--resume)
      echo "$(date -u +%FT%TZ) pretrain $v ${resume[*]}" | tee -a "$RUNS/log/progress.log"
      prefine pretrain --config "$cfg" --model "$MODEL" --out "$out" "${resume[@]}" \
        > "$RUNS/log/$v.report.json" 2> "$RUNS/log/$v.pretrain.log"
      cp "$RUNS/log/$v.report.json" "$out/done.json"
    fi
  fi
  scfg=$RUNS/cfg/suite-$v.toml
  cat > "$scfg" <<TOML
tasks = [$TASKS]
fractions = [1.0, 0.1]
seeds = [$SEEDS]

[[variants]]
name = "$v"
path = "$path"

[protocol]
ner = "head"
tc = "head"
epochs = 10
lr = 5e-3
max_train = 1000
max_eval = 500
max_length = 128
TOML
  echo "$(date -u +%FT%TZ) suite $v" | tee -a "$RUNS/log/progress.log"
  prefine suite --config "$scfg" --out "$RUNS/suite" > "$RUNS/log/$v.suite.log" 2>&1
  echo "$(date -u +%FT%TZ) done $v" | tee -a "$RUNS/log/progress.log"
done
python3 "$HERE/summarize.py" "$RUNS" "$RUNS/cells.csv" > "$RUNS/dev-table.md"
