#!/usr/bin/env bash
# The ablation of docs/training.md at equal training budget (MINUTES each, default 4), from the same converted Gemma 3
# 270M student and teacher as experiments/recipe_gemma3_270m.sh WORKDIR (run that first, or at least its
# conversions): distillation only (single sentences), NCE with hard negatives only (pairs), and the full recipe
# (NCE + spread-out + distillation, pairs), each with the converter's identity head and with the head fitted by least
# squares; then the full recipe with the fitted head again with seed 1, and the soup (uniform average) of the two
# seeds. The data arms (issue 21) put the package registry's text of a REGISTRY=1 run of the recipe script beside
# STS-B and SICK: distill-registry-text (its 3,000 single texts added to the distilled sentences) and
# full-registry-pairs (its retrieval-shaped pairs added to the STS pairs, query and document prompts), to compare with
# distill-fitted-head and full-fitted-head; distill-retrieval-pairs adds to distill-registry-text the registry's
# README pairs and docstring -> code pairs, distilled under the query and document prompts (stage 1 of the recorded
# REGISTRY=1 run). STS-B and SICK test texts, and the retrieval sets in WORKDIR/retrieval, are held out as in the
# recorded run; every arm trains with gradient checkpointing, as the REGISTRY=1 run does. Prints one Markdown table
# row per model: STS-B test Spearman (STS prompt) at each Matryoshka dim, then nDCG@10 at 768 dims on each held-out
# retrieval set in WORKDIR/retrieval (RETRIEVAL=0 leaves them out; RETRIEVAL_QUERIES=N scores each set's first N
# queries only, as `evaluate --retrieval-queries`: quicker, and higher than the whole set gives).
#
#   [ARMS="distill-fitted-head nce-fitted-head ..."] bash experiments/ablation_gemma3_270m.sh WORKDIR [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:?usage: bash experiments/ablation_gemma3_270m.sh WORKDIR [MINUTES]}
MINUTES=${2:-4}
DATA=../shared/data
PY=${PYTHON:-.venv/bin/python}
STS_TEST=$DATA/stsbenchmark/sts-test.csv
OUT=$WORK/ablation
mkdir -p "$OUT"
for folder in teacher student; do
    [ -d "$WORK/$folder" ] || { echo "error: $WORK/$folder is missing: run experiments/recipe_gemma3_270m.sh $WORK first" >&2; exit 2; }
done
COMMON=(--teacher "$WORK/teacher" --cache-dir "$WORK/teacher-cache"
        --held-out "$STS_TEST" --held-out "$DATA/sick/SICK_test_annotated.txt"
        --max-minutes "$MINUTES" --warmup 0.05 --save-steps 100000 --gradient-checkpointing)
for set in "$WORK"/retrieval/*/; do [ -d "$set" ] && COMMON+=(--held-out "${set%/}"); done
TEXTS=(--data "texts:$DATA/stsbenchmark/sts-train.csv" --data "texts:$DATA/stsbenchmark/sts-dev.csv"
       --data "texts:$DATA/sick/SICK_train.txt" --data "texts:$DATA/sick/SICK_trial.txt"
       --nce-weight 0 --gor-weight 0 --text-prompt STS --batch-size 64 --learning-rate 5e-5)
PAIRS=(--data "sick:$DATA/sick/SICK_train.txt" --data "sick:$DATA/sick/SICK_trial.txt"
       --data "stsb:$DATA/stsbenchmark/sts-train.csv" --data "stsb:$DATA/stsbenchmark/sts-dev.csv"
       --batch-size 32 --learning-rate 5e-5)
REGISTRY_TEXT=$WORK/registry-text
RETRIEVAL_SETS=()
if [ "${RETRIEVAL:-1}" != 0 ]; then
    for set in "$WORK"/retrieval/*/; do [ -d "$set" ] && RETRIEVAL_SETS+=("${set%/}"); done
fi
EVAL_RETRIEVAL=(--retrieval-queries "${RETRIEVAL_QUERIES:-0}")
for set in "${RETRIEVAL_SETS[@]}"; do EVAL_RETRIEVAL+=(--retrieval "$set"); done

ARMS=${ARMS:-distill-identity-head distill-fitted-head nce-identity-head nce-fitted-head full-identity-head full-fitted-head full-fitted-head-seed1 soup}
# (the data arms, distill-registry-text, distill-retrieval-pairs and full-registry-pairs, run when named)
arm() {  # NAME ARGS...: train from the student, evaluate, print a table row (only the arms named in $ARMS)
    local name=$1; shift
    [[ " $ARMS " == *" $name "* ]] || return 0
    local start=$SECONDS
    if [ ! -s "$OUT/$name.scores" ]; then
        rm -rf "${OUT:?}/$name"
        $PY train_embeddinggemma.py train "$WORK/student" "$OUT/$name" "${COMMON[@]}" "$@" > "$OUT/$name.log" 2>&1
        $PY train_embeddinggemma.py evaluate "$OUT/$name/final" --sts-file "$STS_TEST" --prompt-name STS \
            "${EVAL_RETRIEVAL[@]}" > "$OUT/$name.scores.tmp"
        mv "$OUT/$name.scores.tmp" "$OUT/$name.scores"
    fi
    row "$name" "$OUT/$name.scores"
    echo "[$((SECONDS - start))s] $name" >&2
}
row() {
    local steps
    steps=$($PY -c "import json; print(json.load(open('$OUT/$1/training_summary.json'))['steps'])" 2>/dev/null || echo -)
    echo "| $1 | $steps | $(awk '/^dim/ {printf "%s | ", $4}' "$2")$(for set in "${RETRIEVAL_SETS[@]}"; do
        awk -v s="$(basename "$set")" '$1 == "retrieval" && ($2 == s || index($2, s "[:") == 1) && $4 == 768 {printf "%s | ", $6}' "$2"; done)"
}
needs_registry() {
    [ -s "$REGISTRY_TEXT/pairs.jsonl" ] || { echo "error: $REGISTRY_TEXT is missing: run REGISTRY=1 bash experiments/recipe_gemma3_270m.sh $WORK first (or scripts/fetch_registry_text.py $REGISTRY_TEXT)" >&2; exit 2; }
}

header="| arm ($MINUTES training minutes each) | steps | STS-B 768 | 512 | 256 | 128 |"
rule="|---|---|---|---|---|---|"
for set in "${RETRIEVAL_SETS[@]}"; do header+=" $(basename "$set") nDCG@10 |"; rule+="---|"; done
echo "$header"
echo "$rule"
arm distill-identity-head "${TEXTS[@]}"
arm distill-fitted-head "${TEXTS[@]}" --fit-head 1024
arm nce-identity-head "${PAIRS[@]}" --distill-weight 0 --gor-weight 0
arm nce-fitted-head "${PAIRS[@]}" --distill-weight 0 --gor-weight 0 --fit-head 1024
arm full-identity-head "${PAIRS[@]}"
arm full-fitted-head "${PAIRS[@]}" --fit-head 1024
arm full-fitted-head-seed1 "${PAIRS[@]}" --fit-head 1024 --seed 1
if [[ " $ARMS " == *" distill-registry-text "* || " $ARMS " == *" full-registry-pairs "* || " $ARMS " == *" distill-retrieval-pairs "* ]]; then needs_registry; fi
arm distill-registry-text "${TEXTS[@]}" --data "$REGISTRY_TEXT/texts.jsonl" --fit-head 1024
arm distill-retrieval-pairs "${TEXTS[@]}" --data "$REGISTRY_TEXT/texts.jsonl" --data "$REGISTRY_TEXT/pairs.jsonl" \
    --data "$REGISTRY_TEXT/code-pairs.jsonl" --fit-head 1024
arm full-registry-pairs "${PAIRS[@]}" --data "$REGISTRY_TEXT/pairs.jsonl" --fit-head 1024
[[ " $ARMS " == *" soup "* ]] || exit 0
if [ ! -s "$OUT/soup.scores" ]; then
    rm -rf "$OUT/soup"
    $PY train_embeddinggemma.py soup "$OUT/soup" "$OUT/full-fitted-head/final" "$OUT/full-fitted-head-seed1/final" > /dev/null
    $PY train_embeddinggemma.py evaluate "$OUT/soup" --sts-file "$STS_TEST" --prompt-name STS > "$OUT/soup.scores.tmp"
    mv "$OUT/soup.scores.tmp" "$OUT/soup.scores"
fi
echo "| soup of the two seeds | - | $(awk '/^dim/ {printf "%s | ", $4}' "$OUT/soup.scores")"
