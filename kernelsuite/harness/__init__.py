"""Benchmark and checking machinery shared by pytest, pytest-benchmark, asv and the CLI."""
