"""metarec: meta-learned LoRA fast weights for cold-start LLM recommendation."""

__version__ = "0.1.0"
