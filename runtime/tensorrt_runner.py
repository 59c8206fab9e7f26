"""Native TensorRT runner: deserialize ``model.engine`` and run it on a CUDA stream.

Written against the tensor-name API of TensorRT 10 (kept in 11): ``num_io_tensors``,
``get_tensor_name``/``get_tensor_mode``/``get_tensor_dtype``, ``set_input_shape``,
``set_tensor_address`` and ``execute_async_v3``. Device memory and the stream come from
cuda-python's runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart`` in cuda-python
< 12.6). Both libraries are imported when the runner opens, never at module import.

An engine only runs under the TensorRT version that built it: the version recorded in the
manifest (``versions.tensorrt``) is compared with the installed one before deserializing. Given
the manifest, the runner deserializes the bytes :func:`mrdl_runtime.integrity.read_artifact`
verified (name, size, SHA-256 unless ``verify=False``) and checks the engine's inputs and outputs
against ``model.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .integrity import check_graph, graph_spec, read_artifact
from .manifest import Manifest
from .runner import BackendUnavailableError, Runner


def import_tensorrt():
    """Import tensorrt and cuda-python's runtime API, or say how to install them."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError("backend 'tensorrt' needs the tensorrt Python package and an NVIDIA GPU; "
                                      "pip install 'mrdl[tensorrt]' or choose an onnxruntime backend") from exc
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendUnavailableError("backend 'tensorrt' needs cuda-python for device memory and streams; "
                                          "pip install 'cuda-python>=12'") from exc
    return tensorrt, cudart


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine whose inputs and outputs have a dynamic batch axis.

    Device buffers are allocated once at ``open`` for ``max_batch``; each ``infer`` sets the input
    shapes, copies the inputs in, enqueues the engine and copies the outputs back on one stream.
    """

    backend = "tensorrt"
    concurrent_infer = False  # one execution context and one set of device buffers: one batch at a time

    def __init__(self, engine_path: str | Path, *, max_batch: int, built_with: str | None = None,
                 device_id: int = 0, manifest: Manifest | None = None, verify: bool = True) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.max_batch = max_batch
        self.built_with = built_with
        self.device_id = device_id
        self.manifest = manifest
        self.verify = verify
        self._trt = self._cudart = None
        self.engine = self.context = self.stream = None
        self.device_buffers: dict[str, int] = {}
        self.dtypes: dict[str, np.dtype] = {}

    def _check(self, result: tuple) -> object:
        """Unpack a cuda-python call's (error, value...) tuple; raise on any CUDA error."""
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            _, name = self._cudart.cudaGetErrorName(error)
            raise RuntimeError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else values

    def _open(self) -> None:
        try:
            self._load()
        except BaseException:
            self._close()
            raise

    def _load(self) -> None:
        trt, cudart = self._trt, self._cudart = import_tensorrt()
        if self.built_with and _major_minor(self.built_with) != _major_minor(trt.__version__):
            raise BackendUnavailableError(
                f"{self.engine_path.name} was built with TensorRT {self.built_with}, but TensorRT {trt.__version__} "
                "is installed; engines are tied to the version that built them: rebuild with mrdl-export --trt")
        error, count = cudart.cudaGetDeviceCount()
        if int(error) != 0 or count <= self.device_id:
            raise BackendUnavailableError(f"backend 'tensorrt' needs a CUDA GPU (device {self.device_id}); none found")
        self._check(cudart.cudaSetDevice(self.device_id))
        serialized = (read_artifact(self.manifest, "tensorrt", verify=self.verify) if self.manifest is not None
                      else self.engine_path.read_bytes())
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT {trt.__version__} could not deserialize {self.engine_path}; "
                                          "it was built for another TensorRT version or GPU: rebuild it on this machine")
        self.context = self.engine.create_execution_context()
        self.stream = self._check(cudart.cudaStreamCreate())
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            spec = graph_spec(name, tuple(self.engine.get_tensor_shape(name)), self.dtypes[name].name)
            (self.input_specs if is_input else self.output_specs).append(spec)
        if self.manifest is not None:
            check_graph(self.manifest, "tensorrt", self.input_specs, self.output_specs)
        for name in self.input_names:  # shapes at max_batch size the device buffers
            shape = tuple(self.engine.get_tensor_shape(name))
            self.context.set_input_shape(name, (self.max_batch, *shape[1:]))
        for name in self.input_names + self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            self.device_buffers[name] = int(self._check(cudart.cudaMalloc(nbytes)))
            self.context.set_tensor_address(name, self.device_buffers[name])

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        staged = {}  # host arrays stay alive until the stream is synchronized
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise ValueError(f"engine inputs {sorted(missing)} were not given (it takes {self.input_names})")
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            if array.shape[0] > self.max_batch:
                raise ValueError(f"batch {array.shape[0]} exceeds the engine's max batch {self.max_batch}")
            self.context.set_input_shape(name, array.shape)
            staged[name] = array
            self._check(cudart.cudaMemcpyAsync(self.device_buffers[name], array.ctypes.data, array.nbytes,
                                               cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        outputs = {}
        for name in self.output_names:
            outputs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name])
            self._check(cudart.cudaMemcpyAsync(outputs[name].ctypes.data, self.device_buffers[name],
                                               outputs[name].nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                               self.stream))
        self._check(cudart.cudaStreamSynchronize(self.stream))
        return outputs

    def _close(self) -> None:
        if self._cudart is None:
            return
        for pointer in self.device_buffers.values():
            self._check(self._cudart.cudaFree(pointer))
        self.device_buffers = {}
        if self.stream is not None:
            self._check(self._cudart.cudaStreamDestroy(self.stream))
        self.context = self.engine = self.stream = None
        self.input_specs, self.output_specs = [], []
