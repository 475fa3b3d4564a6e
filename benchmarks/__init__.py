"""Benchmarks of SerPyTor; a package so that local servers can import ``benchmarks.run_tasks``."""
