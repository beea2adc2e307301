"""Typer entrypoints: the `bcoder` command. One module per group of commands."""
