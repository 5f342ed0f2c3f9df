"""Training recipes, one readable module per mode."""
