"""Targets: what may be written, and the storage behind every path that reaches it."""
