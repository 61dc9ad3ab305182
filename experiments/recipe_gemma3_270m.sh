#!/usr/bin/env bash
# The recorded training experiment of docs/training.md: the real Gemma 3 270M decoder (GGUF) made into an embedding
# model by the recipe in a training budget of MINUTES (default 60) on CPU, teacher google/embeddinggemma-300m.
#
#   bash experiments/recipe_gemma3_270m.sh WORKDIR [MINUTES]
#
# Stage 1 (3/4 of the budget): the head is fitted by least squares to the teacher's embeddings, then distillation
# over every distinct sentence of STS-B train+dev and SICK train+trial (each on its own, STS prompt, teacher
# embeddings cached). Stage 2 (the rest): the full recipe (NCE with hard negatives + spread-out + distillation at
# every Matryoshka dim) on SICK entailment/contradiction and STS-B (>= 4) pairs. Every text of STS-B test and SICK
# test, and of the held-out retrieval sets, is removed from the data, and `check-held-out` verifies the texts trained
# on afterwards. The budget counts training wall-clock only (the head fit included); conversions, teacher caching and
# evaluations come on top and each step prints its time. WORKDIR/final is the final model; its evaluation is
# WORKDIR/final-scores.txt (SICK-R test as "sick-r dim D spearman X", STS-B test as "dim D spearman X", STS prompt,
# then "retrieval SET dim D ndcg@10 X ..." lines), the teacher's WORKDIR/teacher-scores.txt, evaluated last.
# REGISTRY=1 adds the package registry's text (scripts/fetch_registry_text.py): in stage 1, REGISTRY_TEXTS README
# paragraphs (default 3000) distilled under the STS prompt beside the sentences, and REGISTRY_PAIRS retrieval-shaped
# pairs (default 3000) and REGISTRY_CODE_PAIRS docstring -> code pairs from the packages' own Python files (default
# 2000) distilled under the prompts users call (query on the first text, document on the second), so the student
# learns the teacher's query and document embeddings; in stage 2 the same pairs join the STS pairs in the full
# recipe (learning rate RECIPE_LR, default 2e-5). Without it the data is STS-B and SICK only (the run of 2026-11
# recorded in docs/training.md). Both report retrieval (nDCG@10 and more, query prompt on queries, document prompt on
# documents) on held-out sets built from the man pages, the Python standard library and STS-B test; the learning
# curve records nDCG@10 on their first EVAL_QUERIES queries (default 50) beside STS-B, every EVAL_EVERY training
# minutes (default MINUTES/4, at most 15).
# The checkpoints come from EMBEDDINGGEMMA_REFERENCE and GEMMA3_DECODER_GGUF, fetched by
# ../shared/fixtures/fetch_reference_checkpoints.py when unset.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:?usage: bash experiments/recipe_gemma3_270m.sh WORKDIR [MINUTES]}
MINUTES=${2:-60}
DATA=../shared/data
PY=${PYTHON:-.venv/bin/python}
STS_TEST=$DATA/stsbenchmark/sts-test.csv
SICK_TEST=$DATA/sick/SICK_test_annotated.txt
HELD_OUT=(--held-out "$STS_TEST" --held-out "$SICK_TEST")
DISTILL_MINUTES=$($PY -c "print(round($MINUTES * 0.75, 2))")
EVAL_EVERY=${EVAL_EVERY:-$($PY -c "print(min(15.0, $MINUTES / 4))")}
mkdir -p "$WORK"
t() { local start=$SECONDS; "$@"; echo "[$((SECONDS - start))s] $1 ${2:-} ${3:-}" >&2; }

if [ -z "${EMBEDDINGGEMMA_REFERENCE:-}" ] || [ -z "${GEMMA3_DECODER_GGUF:-}" ]; then
    eval "$($PY ../shared/fixtures/fetch_reference_checkpoints.py | grep '^export ')"
fi
[ -d "$WORK/teacher" ] || t $PY convert_checkpoint.py --from sentence-transformers "$EMBEDDINGGEMMA_REFERENCE" "$WORK/teacher"
[ -d "$WORK/student" ] || t $PY convert_checkpoint.py --from gemma3 "$GEMMA3_DECODER_GGUF" "$WORK/student" --embedding-dim 768
# Held-out retrieval sets (man pages, the Python standard library, STS-B test paraphrases), never trained on; and
# diverse text from the package registry (wheels' READMEs: single texts for stage 1, retrieval-shaped pairs for stage 2)
[ -d "$WORK/retrieval" ] || t $PY experiments/build_retrieval_sets.py "$WORK/retrieval" --stsb-test "$STS_TEST"
[ -s "$WORK/registry-text/code-pairs.jsonl" ] || t $PY scripts/fetch_registry_text.py "$WORK/registry-text" \
    --max-texts "${REGISTRY_TEXTS:-3000}" --max-pairs "${REGISTRY_PAIRS:-3000}" \
    --max-code-pairs "${REGISTRY_CODE_PAIRS:-2000}"
RETRIEVAL=() EVAL_RETRIEVAL=()
for set in "$WORK"/retrieval/*/; do
    RETRIEVAL+=(--retrieval "$set") EVAL_RETRIEVAL+=(--eval-retrieval "$set") HELD_OUT+=(--held-out "${set%/}")
done
REGISTRY_PAIRS=() RECIPE_LR=${RECIPE_LR:-5e-5}
[ -n "${REGISTRY:-}" ] && RECIPE_LR=${RECIPE_LR/#5e-5/2e-5} && REGISTRY_PAIRS=(--data "$WORK/registry-text/pairs.jsonl" --data "$WORK/registry-text/code-pairs.jsonl")

# Memory: batches of at most 2048 padded tokens (the default --max-batch-tokens; the registry's README paragraphs run
# to 300 words, and a length-grouped batch of 64 of them held activations past this machine's 24 GB), and with
# REGISTRY=1 gradient checkpointing (without it the stage-1 process still grew past 9 GB in its first minutes).
COMMON=(--teacher "$WORK/teacher" --cache-dir "$WORK/teacher-cache" "${HELD_OUT[@]}"
        --eval-sts-file "$STS_TEST" --eval-every-minutes "$EVAL_EVERY" --save-steps 200
        "${EVAL_RETRIEVAL[@]}" --eval-retrieval-queries "${EVAL_QUERIES:-50}"
        ${REGISTRY:+--gradient-checkpointing})
echo "== stage 1: fitted head, then distillation of single sentences${REGISTRY:+ and of pairs under the query and document prompts} ($DISTILL_MINUTES training minutes)"
t $PY train_embeddinggemma.py train "$WORK/student" "$WORK/distill" "${COMMON[@]}" \
    --data "texts:$DATA/stsbenchmark/sts-train.csv" --data "texts:$DATA/stsbenchmark/sts-dev.csv" \
    --data "texts:$DATA/sick/SICK_train.txt" --data "texts:$DATA/sick/SICK_trial.txt" \
    ${REGISTRY:+--data "$WORK/registry-text/texts.jsonl"} "${REGISTRY_PAIRS[@]}" \
    --nce-weight 0 --gor-weight 0 --text-prompt STS --fit-head 4096 \
    --max-minutes "$DISTILL_MINUTES" --batch-size 64 --learning-rate 5e-5 --warmup 0.05 --seed "${SEED:-0}"
# stage 2 gets what stage 1 left of the budget (a stage stops at the end of the step in progress when its time is up)
read -r DISTILL_MINUTES RECIPE_MINUTES < <($PY -c "
import json
spent = json.load(open('$WORK/distill/training_summary.json'))['training_seconds'] / 60
print(round(spent, 3), round($MINUTES - spent, 3))")
echo "== stage 2: the full recipe on pairs ($RECIPE_MINUTES training minutes)"
t $PY train_embeddinggemma.py train "$WORK/distill/final" "$WORK/recipe" "${COMMON[@]}" \
    --data "sick:$DATA/sick/SICK_train.txt" --data "sick:$DATA/sick/SICK_trial.txt" \
    --data "stsb:$DATA/stsbenchmark/sts-train.csv" --data "stsb:$DATA/stsbenchmark/sts-dev.csv" \
    "${REGISTRY_PAIRS[@]}" --max-minutes "$RECIPE_MINUTES" --curve-offset-minutes "$DISTILL_MINUTES" \
    --batch-size 32 --learning-rate "$RECIPE_LR" --warmup 0.05 --seed "${SEED:-0}"
rm -rf "$WORK/final" && cp -r "$WORK/recipe/final" "$WORK/final"
$PY train_embeddinggemma.py check-held-out "$WORK/distill" "$WORK/recipe" "${HELD_OUT[@]}"
$PY -c "
import json, sys
seconds = [json.load(open(f'$WORK/{s}/training_summary.json'))['training_seconds'] for s in ('distill', 'recipe')]
print(f'training wall-clock: {seconds[0]:.0f}s + {seconds[1]:.0f}s = {sum(seconds) / 60:.1f} minutes (budget $MINUTES)')
"
echo "== final model $WORK/final (SICK-R test, then STS-B test; STS prompt; then retrieval)"
t $PY train_embeddinggemma.py evaluate "$WORK/final" --sick-file "$SICK_TEST" --sts-file "$STS_TEST" \
    --prompt-name STS "${RETRIEVAL[@]}" > "$WORK/final-scores.txt"
cat "$WORK/final-scores.txt"
if [ ! -s "$WORK/teacher-scores.txt" ]; then
    t $PY train_embeddinggemma.py evaluate "$WORK/teacher" --sick-file "$SICK_TEST" --sts-file "$STS_TEST" \
        --prompt-name STS "${RETRIEVAL[@]}" > "$WORK/teacher-scores.txt.tmp"
    mv "$WORK/teacher-scores.txt.tmp" "$WORK/teacher-scores.txt"
fi
echo "== teacher"; cat "$WORK/teacher-scores.txt"
TEACHER=$(grep '^dim' "$WORK/teacher-scores.txt" | awk '{printf "%s%s", sep, $4; sep=","}')
$PY experiments/plot_learning_curve.py "$WORK/distill/learning_curve.jsonl" "$WORK/recipe/learning_curve.jsonl" \
    --output "$WORK/learning_curve.svg" --teacher "$TEACHER"
