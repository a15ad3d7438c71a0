"""Benchmarks that measure tfcompress; each script rewrites its section of BENCHMARKS.md."""
