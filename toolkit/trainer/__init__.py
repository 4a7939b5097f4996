"""Training recipes, one file each. They import their heavy libraries themselves;
nothing here is imported by the host CLI."""
