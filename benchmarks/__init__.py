"""mrdl_bench: PyTorch vs ONNX Runtime vs TensorRT latency, throughput, memory and parity."""
