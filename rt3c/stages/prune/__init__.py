"""`rt3c prune`: block pruning with reweighted group lasso, pattern sets per level, joint fine-tuning."""
