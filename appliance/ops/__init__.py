"""Tooling around the running pipeline (not shipped in its hot path)."""
