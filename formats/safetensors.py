"""The safetensors format, read and written by hand (no `safetensors` package needed).

Every offset in the header is checked against the file size, so a truncated or corrupt file is an
error that names the tensor, not a crash or a silently short tensor.
"""

import json
import math
import mmap
import os
import struct

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """Parse a .safetensors file by hand: u64 header length, JSON header, raw little-endian data."""
    path = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise ValueError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: safetensors header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: safetensors header is not a JSON object")
        start, data_len = 8 + n, size - 8 - n
        # copy-on-write map: tensors are views into the file, torch.frombuffer gets a writable buffer
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 0 else b""
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = _DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a bad header entry {info!r}") from None
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        if not (0 <= b <= e <= data_len):
            raise ValueError(
                f"{path}: tensor {name!r} data_offsets [{b}, {e}] run past the end of the data "
                f"({data_len} bytes): file truncated or header corrupt"
            )
        if e - b != nbytes:
            raise ValueError(
                f"{path}: tensor {name!r} data_offsets [{b}, {e}] span {e - b} bytes but shape {shape} "
                f"of {info['dtype']} needs {nbytes}"
            )
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        elif (start + b) % dtype.itemsize:  # misaligned: copy instead of viewing
            out[name] = torch.frombuffer(bytearray(buf[start + b : start + e]), dtype=dtype).reshape(shape)
        else:
            out[name] = torch.frombuffer(buf, dtype=dtype, count=numel, offset=start + b).reshape(shape)
    return out


def write_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict | None = None):
    """Write tensors (and string metadata) as one .safetensors file."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    items = [(k, t.detach().cpu().contiguous()) for k, t in tensors.items()]
    rev = {v: k for k, v in _DTYPES.items()}
    for name, t in items:
        if t.dtype not in rev:
            raise ValueError(f"write_safetensors: tensor {name!r} has unsupported dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": rev[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad so tensor data starts 8-byte aligned
    tmp = f"{path}.tmp"  # write then rename: a reader (or a mmap) never sees a half-written file
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for _, t in items:
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)
