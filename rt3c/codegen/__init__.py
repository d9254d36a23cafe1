"""TVM code generation: sparse and dense kernels, and every other op the models use."""
