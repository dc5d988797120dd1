"""Helpers shared by several test files (no test imports another test; tests/README.md)."""
