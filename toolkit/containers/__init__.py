"""The only way to a container engine: `spec` (what crosses, as data), `seam` (the
interface every caller uses) and `engine` (the Docker SDK behind it)."""
