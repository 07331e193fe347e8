#!/usr/bin/env python3
"""Convert a *legacy* (pre-zip, torch < 1.6) PyTorch checkpoint to safetensors.

Needs only the standard library, numpy and safetensors -- torch is NOT used.

    python3 scripts/convert_torch_legacy.py IN.pth OUT.safetensors [--keep-num-batches-tracked]

Legacy torch.save layout (torch/serialization.py, `_legacy_save`), all in one
file, back to back:

  1. pickle: magic number 0x1950a86a20f9469cfc6c
  2. pickle: protocol version (1001)
  3. pickle: sys info dict (little_endian, type_sizes, ...)
  4. pickle: the object itself (here a state dict: OrderedDict name -> Tensor).
     Every tensor is a `torch._utils._rebuild_tensor_v2(storage, offset, size,
     stride, requires_grad, backward_hooks)` call, where `storage` is a
     persistent id tuple
        ('storage', storage_type, key, location, numel, view_metadata)
     (`view_metadata` is None, or (view_key, offset, view_numel) for storage
     views written by very old torch versions).
  5. pickle: list of storage keys, in the order their bytes follow.
  6. for each key of (5): int64 little-endian element count, then the raw
     little-endian element bytes.

Tensors are rebuilt with numpy `as_strided` honouring storage offset and
strides, then made contiguous.  Floating tensors are written as float32.
`num_batches_tracked` (int64 BatchNorm counters, not used for inference) are
dropped by default.
"""

import argparse
import collections
import pickle
import struct
import sys

import numpy as np
from numpy.lib.stride_tricks import as_strided
from safetensors.numpy import save_file

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch legacy storage class name -> numpy dtype
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class StorageType:
    """Stand-in for torch.FloatStorage etc.; only its dtype matters."""

    def __init__(self, name):
        if name not in STORAGE_DTYPES:
            raise ValueError(f"unsupported storage type torch.{name}")
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class StorageRef:
    """A reference to a (slice of a) storage whose bytes come later in the file."""

    def __init__(self, key, dtype, numel, view_offset=0):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.view_offset = view_offset  # element offset into the root storage


class LazyTensor:
    """Arguments of _rebuild_tensor_v2, materialised once storages are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def materialise(self, storages):
        flat = storages[self.storage.key]
        if flat.dtype != self.storage.dtype:
            raise ValueError(f"dtype mismatch for storage {self.storage.key}")
        start = self.storage.view_offset + self.offset
        itemsize = flat.dtype.itemsize
        # Bounds check: the highest element any index can reach.
        if self.size and min(self.size) > 0:
            last = start + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= flat.size:
                raise ValueError("tensor view exceeds its storage")
        view = as_strided(
            flat[start:],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *_ignored):
    return data


class LegacyUnpickler(pickle.Unpickler):
    """Unpickler resolving only the handful of torch globals a state dict uses."""

    def __init__(self, f, roots):
        super().__init__(f, encoding="latin1")
        self.roots = roots  # key -> (dtype, numel) of root storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils":
            if name == "_rebuild_tensor_v2":
                return _rebuild_tensor_v2
            if name == "_rebuild_tensor":
                return _rebuild_tensor
            if name == "_rebuild_parameter":
                return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, *rest = pid
        view_metadata = rest[0] if rest else None
        dtype = storage_type.dtype
        prev = self.roots.setdefault(key, (dtype, numel))
        if prev != (dtype, numel):
            raise ValueError(f"storage {key} declared twice differently")
        if view_metadata is not None:
            _view_key, view_offset, view_numel = view_metadata
            return StorageRef(key, dtype, view_numel, view_offset)
        return StorageRef(key, dtype, numel)


def load_legacy(path):
    """Return an OrderedDict name -> numpy array from a legacy .pth file."""
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != MAGIC_NUMBER:
            raise ValueError("not a legacy torch file (bad magic number); "
                             "zip-format checkpoints are not handled here")
        protocol = pickle.load(f)
        if protocol != PROTOCOL_VERSION:
            raise ValueError(f"unsupported protocol version {protocol}")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise ValueError("big-endian checkpoints are not supported")

        roots = {}
        obj = LegacyUnpickler(f, roots).load()
        keys = pickle.load(f)

        storages = {}
        for key in keys:
            dtype, numel = roots[key]
            (count,) = struct.unpack("<q", f.read(8))
            if count != numel:
                raise ValueError(f"storage {key}: header says {count}, pickle says {numel}")
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"storage {key}: truncated file")
            storages[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
        trailing = f.read()
        if trailing:
            raise ValueError(f"{len(trailing)} unexpected trailing bytes")

    # Some checkpoints wrap the weights, e.g. {"state_dict": ...}.
    if isinstance(obj, dict) and "state_dict" in obj and not isinstance(
        obj["state_dict"], LazyTensor
    ):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, got {type(obj).__name__}")

    out = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, LazyTensor):
            raise ValueError(f"entry {name!r} is not a tensor ({type(value).__name__})")
        out[name] = value.materialise(storages)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="legacy torch .pth file")
    ap.add_argument("output", help="output .safetensors file")
    ap.add_argument("--keep-num-batches-tracked", action="store_true",
                    help="keep BatchNorm num_batches_tracked counters (int64)")
    args = ap.parse_args()

    tensors = load_legacy(args.input)
    out = {}
    dropped = 0
    for name, arr in tensors.items():
        if name.endswith("num_batches_tracked") and not args.keep_num_batches_tracked:
            dropped += 1
            continue
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        out[name] = np.ascontiguousarray(arr)

    save_file(out, args.output, metadata={"format": "pt"})

    total = sum(a.size for a in out.values())
    print(f"{args.input} -> {args.output}")
    print(f"{len(out)} tensors, {total} parameters"
          + (f" ({dropped} num_batches_tracked dropped)" if dropped else ""))
    for name, arr in out.items():
        print(f"  {name} {list(arr.shape)} {arr.dtype}")


if __name__ == "__main__":
    sys.exit(main())
