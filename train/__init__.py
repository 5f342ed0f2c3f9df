"""Training recipes, one readable module per mode (meta-training lands with the LLM core)."""
