#!/usr/bin/env bash
# RAG versus fine-tuning versus both, on the query-disjoint protocol (docs/finetuning.md).
#
#   bash benchmarks/finetune.sh throughput   # a short run: tokens/s and s/step, to size a full run
#   bash benchmarks/finetune.sh step-time    # 3 steps of the train-fast recipe, float32 then bf16 autocast: s/step, peak RSS
#   bash benchmarks/finetune.sh share-time   # 6 steps of the train-long recipe without, then with --share-prefix: s/step
#   bash benchmarks/finetune.sh train-fast   # the adapter the README's figures use: 70 steps on 600 pairs (~35 min, 2 cores)
#   bash benchmarks/finetune.sh train-fast-cypher   # the same recipe in Cypher, on text2cypher's other graphs
#   bash benchmarks/finetune.sh train-long   # the train-fast recipe over every passing Spider train pair (~1,000 steps, hours; resumable)
#   bash benchmarks/finetune.sh train-long2  # a second epoch of train-long, from its adapter, in another order (~6.6 h; resumable)
#   bash benchmarks/finetune.sh train-long-cypher   # the same over every passing text2cypher pair of the other graphs (~700 steps; resumable)
#   bash benchmarks/finetune.sh train-kfold-movies   # 5-fold on the movies graph's own bank, under the evaluation protocol (~1 h)
#   bash benchmarks/finetune.sh train-kfold-spider   # the same on each Spider dev graph's own questions, from the train-fast adapter
#   bash benchmarks/finetune.sh train-rag-long       # the train-long adapter on, with 2 retrieved examples in its prompts (~1 h 40 min)
#   bash benchmarks/finetune.sh train-kfold-movies-rag   # train-kfold-movies with 2 retrieved examples in its prompts
#   bash benchmarks/finetune.sh train-kfold-movies-rag-long   # the same, going on from the train-long-cypher adapter
#   bash benchmarks/finetune.sh train        # the real training runs (hours on a CPU; use a quiet machine)
#   bash benchmarks/finetune.sh eval         # retrieval alone / fine-tuning alone / both
#
# The recipes whose adapters the README's figures come from were run before --share-prefix existed: they
# pass --no-share-prefix, so they batch as those runs did. train-long switched to it at step 523 when resumed
# (the rest of that epoch's sequences in one-graph batches; ragkit_adapter.json records it under "batching").
#
# Training data are the train splits over OTHER graphs (Spider4SPARQL train, text2cypher other
# graphs): no evaluation question, graph or answer is trained on.
set -euo pipefail
cd "$(dirname "$0")/.."
RAGKIT=${RAGKIT:-.venv/bin/ragkit}
DATA=${DATA:-../shared/data}
PER_GRAPH=${PER_GRAPH:-3}
MOVIES_LIMIT=${MOVIES_LIMIT:-20}
EPOCHS=${EPOCHS:-1}
THREADS=${THREADS:-$(nproc)}
OUT=benchmarks/results
mkdir -p "$OUT/predictions" adapters

case "${1:-}" in
throughput)
  # 5 steps of one ~700-token sequence (2 retrieved examples) on 32 sampled pairs.
  "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --output /tmp/ragkit-ft-throughput \
    --max-steps 5 --batch-size 1 --grad-accum 1 --limit 32 --threads "$THREADS" --no-resume
  ;;
step-time)
  for mp in none bf16; do
    "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --examples 0 --max-length 768 \
      --limit 600 --max-steps 3 --batch-size 4 --grad-accum 2 --lr 6e-4 --rank 16 --alpha 32 \
      --mixed-precision "$mp" --threads "$THREADS" --save-every 100 --no-resume --output "/tmp/ragkit-ft-step-time-$mp"
  done
  ;;
share-time)
  # A batch of one graph's sequences computes the prompts' shared start (instructions and schema) once.
  for share in no-share-prefix share-prefix; do
    "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --examples 0 --max-length 768 \
      --max-steps 6 --batch-size 4 --grad-accum 2 --lr 3e-4 --rank 16 --alpha 32 --mixed-precision bf16 \
      --"$share" --threads "$THREADS" --save-every 100 --no-resume --output "/tmp/ragkit-ft-share-time-$share"
    python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['throughput']; print(sys.argv[2], t['seconds_per_step'], 's/step,', t['tokens_per_second'], 'tokens/s, peak RSS', t['peak_rss_mb'], 'MB')" \
      "/tmp/ragkit-ft-share-time-$share/ragkit_adapter.json" "$share"
  done
  ;;
train-fast)
  # SPARQL, no examples in the prompts (fine-tuning alone; kgqa_sparql_finetuned.yaml): 600 sampled
  # Spider train pairs, one pass, 8 sequences a step, a high LoRA learning rate for the short run.
  "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --examples 0 --max-length 768 \
    --limit 600 --max-steps 70 --batch-size 4 --grad-accum 2 --lr 6e-4 --rank 16 --alpha 32 \
    --threads "$THREADS" --save-every 10 --no-share-prefix --output adapters/spider4sparql-sparql-noex
  ;;
train-fast-cypher)
  # Cypher, no examples in the prompts (fine-tuning alone; kgqa_cypher_finetuned.yaml): 600 sampled
  # text2cypher pairs over 13 graphs other than movies, with their schemas (train_schemas.jsonl);
  # bf16 autocast: 2.2x faster than float32 on this CPU; its first 3 losses were within 5% of float32's.
  "$RAGKIT" finetune --train "$DATA/movies/train_other_graphs.jsonl" --language cypher --examples 0 --max-length 768 \
    --limit 600 --max-steps 70 --batch-size 4 --grad-accum 2 --lr 6e-4 --rank 16 --alpha 32 \
    --mixed-precision bf16 --threads "$THREADS" --save-every 10 --no-share-prefix --output adapters/text2cypher-cypher-noex
  ;;
train-long)
  # The train-fast recipe (SPARQL, no examples in the prompt) over all of Spider train, once: the pairs
  # that pass the generator's checks (7,981 of 8,659), about 1,000 steps of 8 sequences; bf16 autocast.
  # An interrupted run continues from its last checkpoint when the same command is run again. Steps 1 to
  # 523 ran before --share-prefix existed; from there on its batches share prompt starts.
  "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --examples 0 --max-length 768 \
    --epochs "$EPOCHS" --batch-size 4 --grad-accum 2 --lr 3e-4 --rank 16 --alpha 32 \
    --mixed-precision bf16 --threads "$THREADS" --save-every 20 --output adapters/spider4sparql-sparql-noex-long
  ;;
train-long2)
  # A second epoch of train-long: the finished adapter goes on over the same pairs in another order
  # (--seed 1) with a lower peak rate; one epoch took the full dev set from 3.5% (70 steps) to 27.1%, still
  # rising at its end (18.6% at step 361). About 6.6 h on the 2 cores when nothing else runs; rerun the
  # same command to continue from the last checkpoint. Evaluate with
  # FULL_DEV_PIPELINE=benchmarks/pipelines/ablations/sparql_finetuned_long2_beams.yaml SUFFIX=-long2-beams
  # bash benchmarks/kgqa_ablations.sh full-dev (and sparql_finetuned_long2_fast.yaml, SUFFIX=-long2-fast)
  "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --examples 0 --max-length 768 \
    --epochs 1 --batch-size 4 --grad-accum 2 --lr 2e-4 --seed 1 --init-adapter adapters/spider4sparql-sparql-noex-long \
    --mixed-precision bf16 --threads "$THREADS" --save-every 20 --output adapters/spider4sparql-sparql-noex-long2
  ;;
train-long-cypher)
  # train-long in Cypher: every pair of text2cypher's 13 other graphs (with their schemas) that passes the
  # generator's checks, once; the Spider long run's step 361 took the full dev set from 3.5% to 18.6%.
  "$RAGKIT" finetune --train "$DATA/movies/train_other_graphs.jsonl" --language cypher --examples 0 --max-length 768 \
    --epochs "$EPOCHS" --batch-size 4 --grad-accum 2 --lr 3e-4 --rank 16 --alpha 32 \
    --mixed-precision bf16 --threads "$THREADS" --save-every 20 --output adapters/text2cypher-cypher-noex-long
  ;;
train-kfold-movies)
  # Fine-tuning on the graph's own example bank, the information retrieval gets, k-fold under the
  # evaluation protocol: fold i's adapter never sees fold i's questions nor any question equivalent to
  # them (same folded query or same answer rows). `ragkit eval` answers each question with the adapter
  # of the fold that held it out (benchmarks/pipelines/ablations/cypher_finetuned_kfold.yaml).
  "$RAGKIT" finetune --bank "$DATA/movies/questions.jsonl" --graph "$DATA/movies/graphs" --folds 5 \
    --language cypher --examples 0 --max-length 768 --epochs 3 --batch-size 4 --grad-accum 2 --lr 6e-4 \
    --rank 16 --alpha 32 --mixed-precision bf16 --threads "$THREADS" --save-every 20 --no-share-prefix --output adapters/movies-cypher-5fold
  ;;
train-kfold-spider)
  # The k-fold recipe on Spider4SPARQL's dev graphs (each question's bank is its graph's other questions),
  # going on from the adapter trained on other graphs (train-fast) rather than from a new one. Evaluate with
  # FULL_DEV_PIPELINE=benchmarks/pipelines/ablations/sparql_finetuned_kfold.yaml SUFFIX=-kfold
  # bash benchmarks/kgqa_ablations.sh full-dev; while folds are still training, on what the finished ones
  # held out: IDS=adapters/spider4sparql-sparql-5fold/ragkit_folds.json in front of that command.
  "$RAGKIT" finetune --bank "$DATA/spider4sparql/questions.jsonl" --graph "$DATA/spider4sparql/graphs" --folds 5 \
    --language sparql --examples 0 --max-length 768 --epochs "$EPOCHS" --batch-size 4 --grad-accum 2 --lr 3e-4 \
    --init-adapter adapters/spider4sparql-sparql-noex --mixed-precision bf16 --threads "$THREADS" --save-every 20 \
    --no-share-prefix --output adapters/spider4sparql-sparql-5fold
  ;;
train-rag-long)
  # Fine-tuning AND retrieval, matched: the finished train-long adapter goes on for 130 steps over 1,100
  # sampled Spider train pairs, each prompt holding the 2 pairs of its own train graph whose questions share
  # most words with it (never an equivalent of the pair), as the RAG pipeline holds its 2 retrieved examples.
  # 27 to 30 s a step in bf16 on the 2 cores when nothing else runs (about 1 h). Evaluate with
  # benchmarks/pipelines/ablations/sparql_finetuned_rag_long_fast.yaml.
  "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --examples 2 --max-length 1024 \
    --limit 1100 --max-steps 130 --batch-size 4 --grad-accum 2 --lr 2e-4 --init-adapter adapters/spider4sparql-sparql-noex-long \
    --mixed-precision bf16 --threads "$THREADS" --save-every 10 --output adapters/spider4sparql-sparql-rag-long
  ;;
train-kfold-movies-rag)
  # train-kfold-movies with 2 retrieved examples in each training prompt (from what the fold may see), for
  # the retrieval-and-fine-tuning pipeline ablations/cypher_finetuned_kfold_rag.yaml (2 retrieved examples).
  "$RAGKIT" finetune --bank "$DATA/movies/questions.jsonl" --graph "$DATA/movies/graphs" --folds 5 \
    --language cypher --examples 2 --max-length 1024 --epochs 3 --batch-size 4 --grad-accum 2 --lr 6e-4 \
    --rank 16 --alpha 32 --mixed-precision bf16 --threads "$THREADS" --save-every 20 --no-share-prefix --output adapters/movies-cypher-5fold-rag
  ;;
train-kfold-movies-rag-long)
  # train-kfold-movies-rag going on from the train-long-cypher adapter (Cypher over 13 other graphs) instead of
  # from a new one: the Spider long run took the full dev set from 3.5% to 27.1%. Evaluate with
  # benchmarks/pipelines/ablations/cypher_finetuned_kfold_rag_long_review.yaml.
  "$RAGKIT" finetune --bank "$DATA/movies/questions.jsonl" --graph "$DATA/movies/graphs" --folds 5 \
    --language cypher --examples 2 --max-length 1024 --epochs 3 --batch-size 4 --grad-accum 2 --lr 3e-4 \
    --init-adapter adapters/text2cypher-cypher-noex-long --mixed-precision bf16 --threads "$THREADS" --save-every 20 \
    --no-share-prefix --output adapters/movies-cypher-5fold-rag-long
  ;;
train)
  # SPARQL: with 2 retrieved examples in each prompt (for the RAG+FT pipeline) and without (FT alone).
  "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --examples 2 \
    --epochs "$EPOCHS" --output adapters/spider4sparql-sparql --threads "$THREADS"
  "$RAGKIT" finetune --train "$DATA/spider4sparql/train.jsonl" --language sparql --examples 0 \
    --epochs "$EPOCHS" --output adapters/spider4sparql-sparql-noex --threads "$THREADS"
  # Cypher: schemas come from train_schemas.jsonl next to the pairs.
  "$RAGKIT" finetune --train "$DATA/movies/train_other_graphs.jsonl" --language cypher --examples 2 \
    --epochs "$EPOCHS" --output adapters/text2cypher-cypher --threads "$THREADS"
  ;;
eval)
  slice=(); mslice=()
  if [ "$PER_GRAPH" != "0" ]; then slice=(--per-graph "$PER_GRAPH"); mslice=(--limit "$MOVIES_LIMIT"); fi
  # retrieval alone | fine-tuning alone | both
  "$RAGKIT" eval pipelines/kgqa_sparql.yaml pipelines/kgqa_sparql_finetuned.yaml pipelines/kgqa_sparql_finetuned_rag.yaml \
    --dataset "$DATA/spider4sparql" --predictions "$OUT/predictions/spider4sparql" "${slice[@]}" --skip-answer \
    --report "$OUT/finetune_spider4sparql.json"
  "$RAGKIT" eval pipelines/kgqa_cypher.yaml pipelines/kgqa_cypher_finetuned_rag.yaml \
    --dataset "$DATA/movies" --predictions "$OUT/predictions/movies" "${mslice[@]}" --skip-answer \
    --report "$OUT/finetune_movies.json"
  ;;
*)
  echo "usage: $0 throughput|step-time|train-fast|train-fast-cypher|train-long|train-long2|train-long-cypher|train-kfold-movies|train-kfold-spider|train-rag-long|train-kfold-movies-rag|train-kfold-movies-rag-long|train|eval" >&2
  exit 2
  ;;
esac
