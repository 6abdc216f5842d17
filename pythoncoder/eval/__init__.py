"""Evaluation: sandboxed HumanEval / MBPP, HumanEval+ / MBPP+ (EvalPlus) and unbiased
pass@k (EVAL-01..07).

``pythoncoder eval humaneval|mbpp|humaneval+|mbpp+`` is the command line
(:mod:`pythoncoder.eval.commands`); each benchmark is one entry of
:data:`pythoncoder.eval.benchmarks.BENCHMARKS`, every sample a job of the one sandbox
(:mod:`pythoncoder.eval.sandbox`).
"""

from pythoncoder.eval.benchmarks import BENCHMARKS, evaluate
from pythoncoder.eval.harness import evaluate_samples, summarize, task_counts
from pythoncoder.eval.humaneval import HUMANEVAL_STOP
from pythoncoder.eval.mbpp import MBPP_STOP
from pythoncoder.eval.passk import best_of_n, mean_pass_at_k, pass_at_k, pass_at_ks
from pythoncoder.eval.sandbox import SandboxConfig, SandboxResult, run_program, run_programs
from pythoncoder.infer.stops import truncate_at_stop

__all__ = [
    "BENCHMARKS",
    "HUMANEVAL_STOP",
    "MBPP_STOP",
    "SandboxConfig",
    "SandboxResult",
    "best_of_n",
    "evaluate",
    "evaluate_samples",
    "mean_pass_at_k",
    "pass_at_k",
    "pass_at_ks",
    "run_program",
    "run_programs",
    "summarize",
    "task_counts",
    "truncate_at_stop",
]
