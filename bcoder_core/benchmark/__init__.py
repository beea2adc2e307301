"""The built-in benchmark: seeded program-synthesis problems in the APPS folder layout.

See ``docs/benchmark.md`` and ``generator.py``.
"""

from bcoder_core.benchmark.generator import (
    BENCHMARK_NAME,
    BenchmarkConfig,
    GeneratedProblem,
    Step,
    adjacent_pairs,
    combination,
    generate,
    heldout_pairs,
    run_pipeline,
    verify_solutions,
    write_benchmark,
)

__all__ = [
    "BENCHMARK_NAME",
    "BenchmarkConfig",
    "GeneratedProblem",
    "Step",
    "adjacent_pairs",
    "combination",
    "generate",
    "heldout_pairs",
    "run_pipeline",
    "verify_solutions",
    "write_benchmark",
]
