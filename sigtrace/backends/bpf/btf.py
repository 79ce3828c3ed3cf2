"""Kernel struct offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The TCP state probe is a raw tracepoint: it gets the socket pointer, not a filled trace record, and
reads the few fields it needs itself. bcc compiles against whatever headers it found (possibly
another version's), so the probe never uses their struct layouts: the offsets come from here, from
the running kernel's own type information, as #defines. Only what is needed is decoded: a linear
walk over the type section finds the named structs, then their members (through anonymous
unions/structs) are resolved.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F

# kinds
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, \
    DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BTFError(Exception):
    """The BTF is missing, unreadable, or lacks what the probes need (one line)."""


@dataclass(frozen=True)
class Member:
    offset: int        # bytes from the start of the outer struct
    size: int          # bytes


class BTF:
    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BTFError("BTF too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError("not BTF (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        self._offsets: list[int] = [0]         # type id -> byte offset of its btf_type (id 0 = void)
        self._index()

    @classmethod
    def vmlinux(cls, path: Path = VMLINUX) -> "BTF":
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise BTFError(f"cannot read {path} ({exc.strerror})") from None

    def _index(self) -> None:
        data, pos, end = self._data, self._types_start, self._types_end
        offsets = self._offsets
        unpack = struct.unpack_from
        while pos < end:
            offsets.append(pos)
            info = unpack("<I", data, pos + 4)[0]
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += 12
            if kind in (INT, VAR, DECL_TAG):
                pos += 4
            elif kind == ARRAY:
                pos += 12
            elif kind in (STRUCT, UNION, DATASEC, ENUM64):
                pos += 12 * vlen
            elif kind in (ENUM, FUNC_PROTO):
                pos += 8 * vlen

    def _str(self, off: int) -> str:
        start = self._str_start + off
        return self._data[start:self._data.index(b"\0", start)].decode()

    def _type(self, tid: int) -> tuple[int, int, int, int, int]:
        """(name_off, kind, vlen, kind_flag, size_or_type) of a type id."""
        name_off, info, size = struct.unpack_from("<III", self._data, self._offsets[tid])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size

    def find(self, name: str, kind: int) -> int:
        want = name.encode() + b"\0"
        for tid in range(1, len(self._offsets)):
            name_off, info = struct.unpack_from("<II", self._data, self._offsets[tid])
            if (info >> 24) & 0x1F != kind or not name_off:
                continue
            start = self._str_start + name_off
            if self._data[start:start + len(want)] == want:
                return tid
        raise BTFError(f"no {'struct' if kind == STRUCT else 'type'} {name} in the kernel's BTF")

    def resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            _, kind, _, _, ref = self._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = ref

    def size_of(self, tid: int) -> int:
        tid = self.resolve(tid)
        _, kind, _, _, size = self._type(tid)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return size
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self._data, self._offsets[tid] + 12)
            return self.size_of(elem) * nelems
        raise BTFError(f"type {tid} has no size")

    def members(self, tid: int) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of a struct's or union's members."""
        _, kind, vlen, kflag, _ = self._type(tid)
        if kind not in (STRUCT, UNION):
            raise BTFError(f"type {tid} is not a struct")
        out = []
        pos = self._offsets[tid] + 12
        for _ in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", self._data, pos)
            pos += 12
            bits = off >> 24 if kflag else 0
            out.append((self._str(name_off) if name_off else "", mtype, off & 0xFFFFFF if kflag else off, bits))
        return out

    def member(self, struct_name: str, path: str) -> Member:
        """Byte offset and size of struct_name.path (a.b.c; anonymous unions/structs searched)."""
        tid = self.find(struct_name, STRUCT)
        offset = 0
        for part in path.split("."):
            found = self._lookup(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in the kernel's BTF")
            bit_off, mtype, bits = found
            if bits or bit_off % 8:
                raise BTFError(f"{struct_name}.{path} is a bitfield in the kernel's BTF")
            offset += bit_off // 8
            tid = self.resolve(mtype)
        return Member(offset, self.size_of(tid))

    def _lookup(self, tid: int, name: str) -> tuple[int, int, int] | None:
        for mname, mtype, bit_off, bits in self.members(self.resolve(tid)):
            if mname == name:
                return bit_off, mtype, bits
            if not mname:
                inner = self.resolve(mtype)
                if self._type(inner)[1] in (STRUCT, UNION):
                    found = self._lookup(inner, name)
                    if found is not None:
                        return bit_off + found[0], found[1], found[2]
        return None

    def raw_tracepoint_args(self, name: str) -> list[tuple[str, int]]:
        """(kind name, size) of a raw tracepoint's arguments after the context pointer, from its
        btf_trace_<name> typedef (a pointer to the probe's prototype)."""
        tid = self.find(f"btf_trace_{name}", TYPEDEF)
        ptr = self.resolve(self._type(tid)[4]) if self._type(tid)[1] == TYPEDEF else tid
        _, kind, _, _, proto = self._type(ptr)
        if kind != PTR:
            raise BTFError(f"btf_trace_{name} is not a function pointer")
        proto = self.resolve(proto)
        _, kind, vlen, _, _ = self._type(proto)
        if kind != FUNC_PROTO:
            raise BTFError(f"btf_trace_{name} is not a function pointer")
        args = []
        pos = self._offsets[proto] + 12
        for _ in range(vlen):
            _name_off, ptype = struct.unpack_from("<II", self._data, pos)
            pos += 8
            ptype = self.resolve(ptype)
            _, pkind, _, _, ref = self._type(ptype)
            if pkind == PTR:
                target = self.resolve(ref)
                tname = self._type(target)
                args.append((f"ptr:{self._str(tname[0]) if tname[0] else ''}", 8))
            else:
                args.append((f"{self._str(self._type(ptype)[0])}", self.size_of(ptype)))
        return args[1:]    # the first is the probe's data pointer (void *)
