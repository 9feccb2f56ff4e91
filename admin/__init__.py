"""Operator commands that work on the configured storage account (not deployed)."""
