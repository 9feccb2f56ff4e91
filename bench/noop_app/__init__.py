"""Bench-only Functions app: no-op functions that show the local host's own cost."""
