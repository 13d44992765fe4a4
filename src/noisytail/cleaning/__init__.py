"""Iterative data cleaning: the rules and decisions, neighbour evidence (exact, faiss, refinement),
out-of-fold predictions, manifest edits, reports against the truth, galleries."""
