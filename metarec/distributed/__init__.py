"""Distributed training: DeepSpeed/Accelerate configs and the training engine."""
