"""Hugging Face interop: modeling code for exported ponder/latent models (``remote_code``)."""
