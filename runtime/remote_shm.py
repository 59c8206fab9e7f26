"""System shared memory for :class:`mrdl_runtime.RemoteSegmenter` when client and server share a host.

Triton's shared-memory extension: the client writes the image into a POSIX shared-memory region
(``/dev/shm``), registers it with the server and names it in the request instead of sending the
pixels; the server writes the outputs into regions the client registered the same way. A 4096 x 4096
image (48 MiB) then never passes through gRPC's or HTTP's buffers. The client's regions are kept in a
:class:`RegionPool` (one slot per request in flight, registered once) and removed when the client
closes; a slot whose request failed is removed at once.

``ClientOptions.shared_memory``: "auto" uses it when the server's address is a loopback address and
the server accepts a registration (``mrdl serve`` allows it only when it listens on loopback),
"on" requires it, "off" never.
"""

from __future__ import annotations

import os
import threading
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


class _Slot:
    """The registered regions of one request in flight: ``{output or "image": (region name, handle, bytes)}``."""

    def __init__(self) -> None:
        self.regions: dict[str, tuple[str, object, int]] = {}


class RegionPool:
    """Registered regions kept between requests, one slot per request in flight: a slot is taken for a request
    and given back after its outputs are copied out, so a run of requests registers its regions once (and
    their pages stay mapped on both sides) instead of creating, registering, unregistering and removing four
    regions per request. ``close`` unregisters and removes every region (always call it)."""

    def __init__(self, client) -> None:
        import tritonclient.utils.shared_memory as shm

        self.client, self.shm, self.free, self.slots = client, shm, [], []
        self.lock = threading.Lock()

    def take(self, sizes: dict[str, int]) -> _Slot:
        """A free slot whose regions hold ``sizes`` bytes (by name), grown or made when none does."""
        with self.lock:
            slot = next((s for s in self.free if all(key in s.regions for key in sizes)), None) or \
                next(iter(self.free), None)
            if slot is not None:
                self.free.remove(slot)
            else:
                slot = _Slot()
                self.slots.append(slot)
        for key, size in sizes.items():
            if key not in slot.regions or slot.regions[key][2] < size:
                if key in slot.regions:
                    self._remove(slot.regions.pop(key))
                name = f"mrdl-{os.getpid()}-{uuid.uuid4().hex[:12]}-{key}"
                handle = self.shm.create_shared_memory_region(name, "/" + name, max(1, size))
                slot.regions[key] = (name, handle, max(1, size))
                self.client.register_system_shared_memory(name, "/" + name, max(1, size))
        return slot

    def give(self, slot: _Slot, reusable: bool) -> None:
        """Back to the pool; a slot whose request did not end cleanly (the server may still write) is removed."""
        if reusable:
            with self.lock:
                self.free.append(slot)
            return
        with self.lock:
            self.slots.remove(slot)
        for region in slot.regions.values():
            self._remove(region)

    def _remove(self, region: tuple[str, object, int]) -> None:
        name, handle, _ = region
        try:
            self.client.unregister_system_shared_memory(name)
        except Exception:  # noqa: BLE001 - the server may be gone; the region is removed below anyway
            pass
        self.shm.destroy_shared_memory_region(handle)

    def close(self) -> None:
        with self.lock:
            slots, self.slots, self.free = self.slots, [], []
        for slot in slots:
            for region in slot.regions.values():
                self._remove(region)


class SharedMemoryCall:
    """One request through a :class:`RegionPool` slot: the input written in, the outputs named; ``read`` copies
    the outputs out, ``close`` gives the slot back (always call it)."""

    def __init__(self, pool: RegionPool, module, images: list[np.ndarray], names: list[str], n_classes: int) -> None:
        count, (height, width) = len(images), images[0].shape[:2]  # images of one size, (H, W, 3) uint8 each
        self.pool, self.done = pool, False
        self.shapes = {"image": ((count, height, width, 3), np.uint8), "mask": ((count, height, width), np.uint8),
                       "tiled": ((count, 1), np.bool_), "probabilities": ((count, n_classes, height, width), np.float32)}
        self.names = names
        sizes = {key: self._bytes(key) for key in ["image", *names]}
        self.slot = pool.take(sizes)
        name, handle, _ = self.slot.regions["image"]
        pool.shm.set_shared_memory_region(handle, list(images))  # the one copy in, image after image
        tensor = module.InferInput("image", [count, height, width, 3], "UINT8")
        tensor.set_shared_memory(name, sizes["image"])
        self.inputs, self.outputs = [tensor], []
        for key in names:
            output = module.InferRequestedOutput(key)
            output.set_shared_memory(self.slot.regions[key][0], sizes[key])
            self.outputs.append(output)

    def _bytes(self, key: str) -> int:
        shape, dtype = self.shapes[key]
        return int(np.prod(shape)) * np.dtype(dtype).itemsize

    def read(self, _result) -> Outputs:
        arrays = {}
        for key in self.names:
            shape, dtype = self.shapes[key]
            view = self.pool.shm.get_contents_as_numpy(self.slot.regions[key][1], dtype, list(shape))
            arrays[key] = np.array(view)  # the one copy out: the slot serves the next request
        self.done = True
        return Outputs(arrays)

    def close(self) -> None:
        if self.slot is not None:
            self.pool.give(self.slot, reusable=self.done)
            self.slot = None


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
