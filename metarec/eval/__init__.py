"""Evaluation: ranking metrics, and running methods over a protocol split."""
