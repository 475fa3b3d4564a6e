"""Fixture modules and pipelines of tests/test_cluster_faults.py."""
