"""LoRA fine-tuning of a local causal LM for text-to-SPARQL and text-to-Cypher (``ragkit finetune``).

* :mod:`ragkit.finetune.data` turns question/query pairs into training sequences whose prompt is
  exactly the one the query generator stage writes at inference (same instructions, schema
  rendering, examples as exchanges and chat template); the loss covers only the query.
* :mod:`ragkit.finetune.trainer` runs the LoRA training (peft), resumable, and writes the adapter
  with its ``ragkit_adapter.json``; ``--bank FILE --folds K`` trains one adapter per fold under the
  query-disjoint evaluation protocol.

torch, transformers and peft load only when training starts.
"""
