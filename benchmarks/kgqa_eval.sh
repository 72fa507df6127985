#!/usr/bin/env bash
# KGQA accuracy of ragkit's pipelines beside the peer baseline (schema + question, no examples),
# same bundled model, under the query-disjoint protocol of shared/data/README.md.
#   bash benchmarks/kgqa_eval.sh            # stratified slice: first PER_GRAPH questions of each graph
#   PER_GRAPH=0 bash benchmarks/kgqa_eval.sh  # full datasets (hours on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PER_GRAPH=${PER_GRAPH:-3}
MOVIES_LIMIT=${MOVIES_LIMIT:-20}
RAGKIT=${RAGKIT:-.venv/bin/ragkit}
DATA=${DATA:-../shared/data}
OUT=benchmarks/results
mkdir -p "$OUT/predictions"
slice=(); mslice=()
if [ "$PER_GRAPH" != "0" ]; then slice=(--per-graph "$PER_GRAPH"); mslice=(--limit "$MOVIES_LIMIT"); fi
"$RAGKIT" eval pipelines/kgqa_sparql.yaml pipelines/baselines/sparql_schema_only.yaml \
  --dataset "$DATA/spider4sparql" --predictions "$OUT/predictions/spider4sparql" "${slice[@]}" --skip-answer \
  --report "$OUT/kgqa_spider4sparql.json"
"$RAGKIT" eval pipelines/kgqa_cypher.yaml pipelines/baselines/cypher_schema_only.yaml \
  --dataset "$DATA/movies" --predictions "$OUT/predictions/movies" "${mslice[@]}" --skip-answer \
  --report "$OUT/kgqa_movies.json"
