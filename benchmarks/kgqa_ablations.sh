#!/usr/bin/env bash
# What each part of query generation buys, in one run (issue 4's table): the peer baseline (schema +
# question, no examples, plain decoding), ragkit's retrieval pipeline, fine-tuning alone, fine-tuning
# without constrained decoding / without extra candidates / without repair, and fine-tuning + retrieval.
#
#   bash benchmarks/kgqa_ablations.sh               # stratified slices (PER_GRAPH questions per Spider graph, MOVIES_LIMIT movies questions)
#   PER_GRAPH=0 bash benchmarks/kgqa_ablations.sh   # full dev sets (hours on a 2-core CPU)
#   bash benchmarks/kgqa_ablations.sh spider|movies # one of the two tables
#   bash benchmarks/kgqa_ablations.sh full-dev      # the full Spider4SPARQL dev set, fine-tuned greedy pipeline with the loop guard,
#                                                   # CONCURRENCY questions at once (default 8), timed; SUFFIX names its outputs;
#                                                   # IDS=FILE evaluates only those ids (e.g. a k-fold set's ragkit_folds.json)
#   bash benchmarks/kgqa_ablations.sh vote          # the fine-tuned pipeline's first good query against the query chosen by vote,
#                                                   # on the same questions: IDS=FILE, else the first PER_GRAPH of each graph;
#                                                   # CONCURRENCY (default 1 here); NAME names the outputs (default vote);
#                                                   # FIRST_PIPELINE / VOTE_PIPELINE replace the two pipelines (e.g. another adapter's)
#
# The fine-tuned rows need the adapter: bash benchmarks/finetune.sh train-fast (or train).
set -euo pipefail
cd "$(dirname "$0")/.."
RAGKIT=${RAGKIT:-.venv/bin/ragkit}
DATA=${DATA:-../shared/data}
PER_GRAPH=${PER_GRAPH:-3}
MOVIES_LIMIT=${MOVIES_LIMIT:-24}
# full-dev: questions of a graph run at once, their queries decoded in batches (1: one at a time)
CONCURRENCY_VOTE=${CONCURRENCY:-1}  # vote: one at a time unless CONCURRENCY is given
CONCURRENCY=${CONCURRENCY:-8}
SUFFIX=${SUFFIX:-}
OUT=benchmarks/results
A=benchmarks/pipelines/ablations
mkdir -p "$OUT/predictions"

what=${1:-all}
if [ "$what" = "full-dev" ]; then
  start=$(date +%s)
  "$RAGKIT" eval "${FULL_DEV_PIPELINE:-$A/sparql_finetuned_fast.yaml}" --dataset "$DATA/spider4sparql" --concurrency "$CONCURRENCY" ${IDS:+--ids "$IDS"} \
    --predictions "$OUT/predictions/spider4sparql-full$SUFFIX" --skip-answer --report "$OUT/kgqa_spider4sparql_full_dev$SUFFIX.json"
  echo "full Spider4SPARQL dev: $(( $(date +%s) - start )) s wall-clock (a resumed run counts only this part)"
  exit 0
fi

if [ "$what" = "vote" ]; then
  name=${NAME:-vote}
  sel=(--per-graph "$PER_GRAPH"); [ -n "${IDS:-}" ] && sel=(--ids "$IDS")
  "$RAGKIT" eval "${VOTE_PIPELINE:-$A/sparql_finetuned_vote.yaml}" "${FIRST_PIPELINE:-pipelines/kgqa_sparql_finetuned.yaml}" --dataset "$DATA/spider4sparql" "${sel[@]}" \
    --concurrency "$CONCURRENCY_VOTE" --skip-answer --predictions "$OUT/predictions/spider4sparql-$name" \
    --report "$OUT/kgqa_spider4sparql_${name//-/_}.json"
  exit 0
fi

slice=(); mslice=()
if [ "$PER_GRAPH" != "0" ]; then slice=(--per-graph "$PER_GRAPH"); mslice=(--limit "$MOVIES_LIMIT"); fi
# Without the adapter the 135M model writes no correct Spider query (0 of 18 for the pipeline and the
# baseline alike), so the parts are ablated on the fine-tuned pipeline, where they can show an effect.
sparql=(pipelines/baselines/sparql_schema_only.yaml pipelines/kgqa_sparql.yaml)
if [ -d adapters/spider4sparql-sparql-noex ]; then
  sparql+=(pipelines/kgqa_sparql_finetuned.yaml "$A/sparql_finetuned_no_constraint.yaml" "$A/sparql_finetuned_no_candidates.yaml"
           "$A/sparql_finetuned_no_repair.yaml" "$A/sparql_finetuned_greedy.yaml" "$A/sparql_finetuned_greedy_no_constraint.yaml"
           "$A/sparql_finetuned_rag.yaml")
else
  echo "no adapter in adapters/spider4sparql-sparql-noex: the fine-tuned rows are left out (bash benchmarks/finetune.sh train-fast)" >&2
fi
[ "$what" = "movies" ] || "$RAGKIT" eval "${sparql[@]}" --dataset "$DATA/spider4sparql" --predictions "$OUT/predictions/spider4sparql" \
  "${slice[@]}" --skip-answer --report "$OUT/kgqa_ablations_spider4sparql.json"
cypher=(pipelines/baselines/cypher_schema_only.yaml pipelines/kgqa_cypher.yaml "$A/cypher_no_constraint.yaml")
if [ -d adapters/text2cypher-cypher-noex ]; then
  cypher+=(pipelines/kgqa_cypher_finetuned.yaml)
elif [ "$what" != "spider" ]; then
  echo "no adapter in adapters/text2cypher-cypher-noex: the fine-tuned Cypher row is left out (bash benchmarks/finetune.sh train-fast-cypher)" >&2
fi
[ "$what" = "spider" ] || "$RAGKIT" eval "${cypher[@]}" \
  --dataset "$DATA/movies" --predictions "$OUT/predictions/movies" "${mslice[@]}" --skip-answer \
  --report "$OUT/kgqa_ablations_movies.json"
