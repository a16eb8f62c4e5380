"""Training stages, each a thin configuration of a TRL trainer: reward model, DPO."""
