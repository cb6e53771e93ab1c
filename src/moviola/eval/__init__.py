"""moviola.eval (kept import-free so submodules load only what they need)."""
