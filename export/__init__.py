"""UNet -> ONNX -> TensorRT export, engine cache keys and manifests, benchmark harness."""
