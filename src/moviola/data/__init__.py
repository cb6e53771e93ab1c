"""moviola.data (kept import-free so submodules load only what they need)."""
