"""Evaluation with the paper's protocol (SPEC §7): pass@1 over k samples, cons@k, pass@k."""

from r1lab.eval.harness import EndpointBackend, EngineBackend, EvalError, evaluate, markdown_table
from r1lab.eval.metrics import majority_vote, pass_at_k, pass_k_values

__all__ = ["EndpointBackend", "EngineBackend", "EvalError", "evaluate", "markdown_table", "majority_vote",
           "pass_at_k", "pass_k_values"]
