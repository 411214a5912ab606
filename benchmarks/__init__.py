"""Benchmark runners (SWE-bench, MATH-500/AIME, CRUXEval, HumanEval) and performance benches."""
