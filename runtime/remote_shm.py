"""System shared memory for :class:`mrdl_runtime.RemoteSegmenter` when client and server share a host.

Triton's shared-memory extension: the client writes the image into a POSIX shared-memory region
(``/dev/shm``), registers it with the server and names it in the request instead of sending the
pixels; the server writes the outputs into regions the client registered the same way. A 4096 x 4096
image (48 MiB) then never passes through gRPC's or HTTP's buffers. Each request has its own regions,
unregistered and removed once its outputs are copied out (also when it fails).

``ClientOptions.shared_memory``: "auto" uses it when the server's address is a loopback address and
the server accepts a registration (``mrdl serve`` allows it only when it listens on loopback),
"on" requires it, "off" never.
"""

from __future__ import annotations

import os
import uuid

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def is_loopback(address: str) -> bool:
    """``host:port`` names this host's loopback interface."""
    return address.rsplit(":", 1)[0] in LOOPBACK or address.startswith("127.")


class Outputs:
    """The outputs of one request, copied out of its shared-memory regions (``as_numpy`` like a result)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


class SharedMemoryCall:
    """The regions of one request: the input written in, the outputs registered; ``read`` copies the outputs
    out, ``close`` unregisters and removes every region (always call it)."""

    def __init__(self, client, module, images: np.ndarray, names: list[str], n_classes: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self.client, self.shm, self.regions = client, shm, []
        count, height, width = images.shape[:3]
        self.shapes = {"mask": ((count, height, width), np.uint8), "tiled": ((count, 1), np.bool_),
                       "probabilities": ((count, n_classes, height, width), np.float32)}
        tag = f"mrdl-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        image_region = self._region(f"{tag}-image", images.nbytes)
        shm.set_shared_memory_region(image_region, [np.ascontiguousarray(images)])
        tensor = module.InferInput("image", list(images.shape), "UINT8")
        tensor.set_shared_memory(f"{tag}-image", images.nbytes)
        self.inputs, self.outputs, self.handles = [tensor], [], {}
        for name in names:
            shape, dtype = self.shapes[name]
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            self.handles[name] = self._region(f"{tag}-{name}", size)
            output = module.InferRequestedOutput(name)
            output.set_shared_memory(f"{tag}-{name}", size)
            self.outputs.append(output)

    def _region(self, name: str, size: int):
        handle = self.shm.create_shared_memory_region(name, "/" + name, max(1, size))
        self.regions.append((name, handle))
        self.client.register_system_shared_memory(name, "/" + name, max(1, size))
        return handle

    def read(self, _result) -> Outputs:
        arrays = {}
        for name, handle in self.handles.items():
            shape, dtype = self.shapes[name]
            arrays[name] = np.array(self.shm.get_contents_as_numpy(handle, dtype, list(shape)))  # copied out
        return Outputs(arrays)

    def close(self) -> None:
        for name, handle in self.regions:
            try:
                self.client.unregister_system_shared_memory(name)
            except Exception:  # noqa: BLE001 - the server may be gone; the region is removed below anyway
                pass
            self.shm.destroy_shared_memory_region(handle)
        self.regions = []


def probe(client) -> str | None:
    """Why the server does not accept a shared-memory registration from this client, or None when it does."""
    import tritonclient.utils.shared_memory as shm

    name = f"mrdl-{os.getpid()}-{uuid.uuid4().hex[:12]}-probe"
    handle = shm.create_shared_memory_region(name, "/" + name, 64)
    try:
        client.register_system_shared_memory(name, "/" + name, 64)
        client.unregister_system_shared_memory(name)
        return None
    except Exception as exc:  # noqa: BLE001 - any refusal means: not here
        return " ".join(str(exc).split())[:200]
    finally:
        shm.destroy_shared_memory_region(handle)
