#!/usr/bin/env bash
# The recorded training experiment of docs/training.md: the real Gemma 3 270M decoder (GGUF) converted with an
# identity head of the teacher's size, trained with the recipe, teacher google/embeddinggemma-300m; STS-B test
# Spearman before and after at every Matryoshka dim, next to the teacher's. CPU only.
#   EMBEDDINGGEMMA_REFERENCE=... GEMMA3_DECODER_GGUF=... bash experiments/recipe_gemma3_270m.sh [WORKDIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-experiment-output}
STEPS=${2:-80}  # the recorded run used 80 planned steps and evaluated checkpoint-40
DATA=../shared/data
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$WORK"
t() { local start=$SECONDS; "$@"; echo "[$(( SECONDS - start ))s] $*" >&2; }

[ -d "$WORK/teacher" ] || t $PY convert_checkpoint.py --from sentence-transformers "$EMBEDDINGGEMMA_REFERENCE" "$WORK/teacher"
[ -d "$WORK/student" ] || t $PY convert_checkpoint.py --from gemma3 "$GEMMA3_DECODER_GGUF" "$WORK/student" --embedding-dim 768
echo "== teacher";  t $PY train_embeddinggemma.py evaluate "$WORK/teacher" --sts-file $DATA/stsbenchmark/sts-test.csv --prompt-name STS
echo "== student before"; t $PY train_embeddinggemma.py evaluate "$WORK/student" --sts-file $DATA/stsbenchmark/sts-test.csv --prompt-name STS
t $PY train_embeddinggemma.py train "$WORK/student" "$WORK/run" --teacher "$WORK/teacher" \
    --data sick:$DATA/sick/SICK_train.txt --data stsb:$DATA/stsbenchmark/sts-train.csv \
    --max-steps "$STEPS" --batch-size 16 --learning-rate 5e-5 --save-steps 40
echo "== student after"; t $PY train_embeddinggemma.py evaluate "$WORK/run/final" --sts-file $DATA/stsbenchmark/sts-test.csv --prompt-name STS
