"""Training recipes, one file each. Importing this package imports torch lazily:
the recipes import their heavy libraries inside their functions."""
