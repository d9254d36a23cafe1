"""Search for pattern sets per DVFS level (RT3 §4)."""
