"""mrdl_runtime: run exported MRDL models with numpy + onnxruntime or TensorRT; never imports torch."""
