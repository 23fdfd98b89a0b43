"""UNet backends (torch, onnxruntime, TensorRT) behind one interface."""
