"""Meta-learning math: the batched inner loop, the outer (meta) objectives, the trained model
as a method, explanations and online updates of adapted users."""
