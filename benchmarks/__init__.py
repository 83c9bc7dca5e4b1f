"""Benchmarks: each module is a script with main(argv); see README."""
