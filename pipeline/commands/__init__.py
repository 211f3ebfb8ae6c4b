"""Typer sub-commands. Each module imports heavy libraries only inside its commands."""
