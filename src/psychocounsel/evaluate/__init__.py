"""Evaluation of trained models: reward-model metrics on held-out preference pairs."""
