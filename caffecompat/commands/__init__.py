"""Subcommands of the caffecompat CLI, one module each."""
