"""Which external files an ONNX graph would make ONNX Runtime read, found without the onnx package.

A tensor stored outside the graph (`data_location = EXTERNAL`) names its file in `external_data`
{"location": ..., "offset", "length"}; ONNX Runtime opens that path relative to the graph. The bundle's
manifest declares, with their hashes, the only data files a graph may use, so the loader reads every
location first and refuses one the manifest does not declare (an undeclared, unhashed file could hold
anything: a tampered one gave all-NaN samples).

This walks the protobuf wire format of ModelProto (onnx/onnx.proto) over a memory map, skipping tensor
payloads by their length, so a 2 GB graph costs one pass over its field headers, not a parse:
  ModelProto.graph 7, .functions 25 -> FunctionProto.node 7
  GraphProto.node 1, .initializer 5, .sparse_initializer 15
  NodeProto.attribute 5 -> AttributeProto.t 5, .g 6, .tensors 10, .graphs 11, .sparse_tensor 22, .sparse_tensors 23
  SparseTensorProto.values 1, .indices 2
  TensorProto.external_data 13 -> StringStringEntryProto.key 1, .value 2
"""
from __future__ import annotations

import mmap
from pathlib import Path

MAX_DEPTH = 64          # graphs nest through attributes (If/Loop bodies); ours have none


class OnnxFormatError(ValueError):
    """The file is not a well-formed ONNX protobuf."""


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise OnnxFormatError("truncated or overlong varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value start, value end) of each field of the message at buf[start:end]."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, j = _varint(buf, i, end)
        elif wire == 1:
            j = i + 8
        elif wire == 5:
            j = i + 4
        elif wire == 2:
            n, i = _varint(buf, i, end)
            j = i + n
        else:
            raise OnnxFormatError(f"unsupported wire type {wire}")
        if j > end:
            raise OnnxFormatError("a field runs past the end of its message")
        yield field, wire, i, j
        i = j


# For each message kind: its length-delimited fields that hold messages we must descend into.
_CHILDREN = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _tensor_location(buf, start: int, end: int) -> str | None:
    for field, wire, a, b in _fields(buf, start, end):
        if field != 13 or wire != 2:
            continue
        key = value = None
        for f2, w2, c, d in _fields(buf, a, b):
            if w2 == 2 and f2 == 1:
                key = bytes(buf[c:d]).decode("utf-8", "replace")
            elif w2 == 2 and f2 == 2:
                value = bytes(buf[c:d]).decode("utf-8", "replace")
        if key == "location":
            return value or ""
    return None


def _walk(buf, kind: str, start: int, end: int, depth: int, found: set[str]) -> None:
    if depth > MAX_DEPTH:
        raise OnnxFormatError(f"messages nested more than {MAX_DEPTH} deep")
    if kind == "tensor":
        loc = _tensor_location(buf, start, end)
        if loc is not None:
            found.add(loc)
        return
    children = _CHILDREN[kind]
    for field, wire, a, b in _fields(buf, start, end):
        if wire == 2 and field in children:
            _walk(buf, children[field], a, b, depth + 1, found)


def external_locations(path: Path) -> set[str]:
    """Every `external_data` location named by a tensor of the ONNX graph at `path` (empty for a graph
    that keeps its weights inside). Raises OnnxFormatError for a file that is not ONNX protobuf."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise OnnxFormatError("the file is empty")
        found: set[str] = set()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as buf:
            _walk(buf, "model", 0, size, 0, found)
        return found
