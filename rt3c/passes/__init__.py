"""onnx-ir passes that find the linear layers of an exported model and encode their sparsity."""
