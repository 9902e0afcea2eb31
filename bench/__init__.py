"""Benchmarks: routing quality (run.py) and gateway cost (gateway_cost.py)."""
