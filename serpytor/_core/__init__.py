"""Compiled kernels (scheduling and context merge), each beside a pure-Python reference."""
