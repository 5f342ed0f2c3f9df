"""Models: the LLM backbone, LoRA fast-weight layers, item encoders and the user model."""
