"""Bridges to other frameworks. Each module imports its framework only when used.

* :mod:`ragkit.integrations.langchain`: a pipeline as a LangChain ``Runnable``; LangChain retrievers
  and chat models inside ragkit pipelines.
"""
