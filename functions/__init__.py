"""Trigger modules: each adapts one binding to one library call (one Blueprint per module)."""
