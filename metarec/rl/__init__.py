"""Reinforcement learning for long-term reward: off-policy evaluation first (issue 9)."""
