"""Pipeline passes, one per module: scoring, allocation, rewrite, validate (installed as graphprune.passes)."""
