"""Test time: tau on cached logits, FixRes views and ten-crop, the top-k ensemble merge, the
Optuna studies and the rule that keeps a tuned value."""
