"""Meta-learning math: the batched inner loop and the outer (meta) updates."""
