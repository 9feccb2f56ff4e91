"""Bench-only Functions app: the gateway's HTTP functions without its queue trigger."""
