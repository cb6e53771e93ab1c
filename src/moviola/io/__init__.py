"""Files on disk: moviola checkpoint directories (safetensors + JSON, atomic writes) and safe foreign loads."""
