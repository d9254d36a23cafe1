"""The stages layer (docs/ARCHITECTURE.md): export, plan and encode, lower, build, compile, run, the latency
model, the model zoo, prune and search. Each stage is a module of its own; `rt3c.api` calls them."""
