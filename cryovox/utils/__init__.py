"""Small helpers shared by pipelines and commands (no science, no torch at import)."""
