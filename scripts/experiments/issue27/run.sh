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
#
# Stage A' (confirmation runs): STEPS=1000 PT_SEED=14 scripts/experiments/issue27/run.sh tpl ner
# pre-finetunes each variant for STEPS steps with pre-finetuning seed PT_SEED into
# pt/<v>.<STEPS>.s<PT_SEED>, and scores it in the suite as variant <v>.<STEPS> with downstream
# seed PT_SEED, so that summarize.py averages a variant over its pre-finetuning seeds.
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
STEPS=${STEPS:-300}
PT_SEED=${PT_SEED:-}
[ -n "$PT_SEED" ] && SEEDS=$PT_SEED

prefine() { nice -n 19 "$BIN" --threads "$THREADS" "$@"; }
mkdir -p "$RUNS/cfg" "$RUNS/pt" "$RUNS/log"
[ $# -gt 0 ] && ORDER=("$@")
for v in "${ORDER[@]}"; do
  name=$v
  run=$v
  if [ -n "$PT_SEED" ]; then
    name=$v.$STEPS
    run=$v.$STEPS.s$PT_SEED
  fi
  if [ "$v" = base ]; then
    path=$MODEL
  else
    out=$RUNS/pt/$run
    path=$out
    if [ ! -f "$out/done.json" ]; then
      cfg=$RUNS/cfg/$run.toml
      {
        sed "s/^max_steps = .*/max_steps = $STEPS/" "$HERE/common.toml"
        [ -n "$PT_SEED" ] && echo "seed = $PT_SEED"
        cat "$HERE/variants/$v.toml"
      } > "$cfg"
      resume=()
      [ -f "$out/checkpoint/state.json" ] && resume=(--resume)
      echo "$(date -u +%FT%TZ) pretrain $run ${resume[*]}" | tee -a "$RUNS/log/progress.log"
      prefine pretrain --config "$cfg" --model "$MODEL" --out "$out" "${resume[@]}" \
        > "$RUNS/log/$run.report.json" 2> "$RUNS/log/$run.pretrain.log"
      cp "$RUNS/log/$run.report.json" "$out/done.json"
    fi
  fi
  scfg=$RUNS/cfg/suite-$run.toml
  cat > "$scfg" <<TOML
tasks = [$TASKS]
fractions = [1.0, 0.1]
seeds = [$SEEDS]

[[variants]]
name = "$name"
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
  echo "$(date -u +%FT%TZ) suite $run" | tee -a "$RUNS/log/progress.log"
  prefine suite --config "$scfg" --out "$RUNS/suite" > "$RUNS/log/$run.suite.log" 2>&1
  echo "$(date -u +%FT%TZ) done $run" | tee -a "$RUNS/log/progress.log"
done
python3 "$HERE/summarize.py" "$RUNS" "$RUNS/cells.csv" > "$RUNS/dev-table.md"
