"""mrdl_export: checkpoint -> deploy module -> verified ONNX (FP32/FP16/INT8) and TensorRT engines."""
