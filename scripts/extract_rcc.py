#!/usr/bin/env python3
"""Extract every file from a compiled Qt resource bundle (``.rcc``).

Usage::

    scripts/extract_rcc.py RCC_FILE OUT_DIR

Each resource is written to ``OUT_DIR/<path inside the bundle>``, so a
resource ``:/gcompris/src/activities/foo/resource/bar.png`` ends up at
``OUT_DIR/gcompris/src/activities/foo/resource/bar.png``.

Only the Python standard library is required.  Resources compressed with
zstd (Qt >= 5.13 ``rcc --compress-algo zstd``) additionally need either the
``zstandard`` Python module or the ``zstd`` command-line tool.

Binary layout (see qtbase ``src/tools/rcc/rcc.cpp`` and
``src/corelib/io/qresource.cpp``); all integers are big-endian::

    header   "qres"  u32 version  u32 tree_offset  u32 data_offset
             u32 names_offset  [u32 overall_flags, version >= 3 only]

    names    at names_offset + name_offset:
             u16 length (UTF-16 code units)  u32 hash  UTF-16BE name

    tree     array of fixed-size nodes starting at tree_offset; node 0 is
             the root directory.  14 bytes per node for version 1, 22 for
             version 2 and 3 (8 extra bytes: last-modified, ms since epoch)
             u32 name_offset  u16 flags
             directory (flags & 0x02):  u32 child_count  u32 first_child
                                        (index of the first child node;
                                        children are contiguous)
             file:                      u16 country  u16 language
                                        u32 data_offset
             [u64 last_modified, version >= 2 only]

    data     at data_offset + node.data_offset:  u32 length, then payload
             flags & 0x01 (zlib):  payload = u32 uncompressed length
                                   followed by a zlib stream (qCompress)
             flags & 0x04 (zstd):  payload = one zstd frame
             otherwise:            payload is the raw file
"""

import os
import struct
import subprocess
import sys
import zlib

FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04


def _zstd_decompress(payload):
    """Decompress one zstd frame, via the zstandard module or the zstd CLI."""
    try:
        import zstandard  # type: ignore
    except ImportError:
        zstandard = None
    if zstandard is not None:
        # max_output_size lets frames without a content size decode too.
        return zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=1 << 30
        )
    try:
        return subprocess.run(
            ["zstd", "-d", "-c"], input=payload, stdout=subprocess.PIPE, check=True
        ).stdout
    except FileNotFoundError:
        sys.exit("zstd-compressed resource: install `zstandard` (pip) or `zstd`")


class RccReader:
    def __init__(self, blob):
        self.blob = blob
        if blob[:4] != b"qres":
            raise ValueError("not a Qt resource file (missing 'qres' magic)")
        (self.version, self.tree_off, self.data_off, self.names_off) = struct.unpack_from(
            ">IIII", blob, 4
        )
        if self.version not in (1, 2, 3):
            raise ValueError("unsupported rcc format version %d" % self.version)
        self.node_size = 14 if self.version == 1 else 22

    # -- low-level accessors -------------------------------------------------

    def _node(self, index):
        """Return (name_offset, flags, a, b) for tree node `index`.

        For directories a/b are (child_count, first_child); for files they are
        ((country << 16) | language, data_offset).
        """
        return struct.unpack_from(">IHII", self.blob, self.tree_off + index * self.node_size)

    def _name(self, name_offset):
        pos = self.names_off + name_offset
        (length,) = struct.unpack_from(">H", self.blob, pos)
        pos += 2 + 4  # skip the u16 length and the u32 hash
        return self.blob[pos : pos + 2 * length].decode("utf-16-be")

    def _data(self, data_offset, flags):
        pos = self.data_off + data_offset
        (length,) = struct.unpack_from(">I", self.blob, pos)
        payload = self.blob[pos + 4 : pos + 4 + length]
        if flags & FLAG_COMPRESSED:
            # qCompress(): 4-byte big-endian expected size, then zlib stream.
            (expected,) = struct.unpack_from(">I", payload, 0)
            out = zlib.decompress(payload[4:])
            if len(out) != expected:
                raise ValueError("zlib size mismatch (%d != %d)" % (len(out), expected))
            return out
        if flags & FLAG_COMPRESSED_ZSTD:
            return _zstd_decompress(payload)
        return payload

    # -- tree walk -------------------------------------------------------------

    def walk(self):
        """Yield (relative_path, bytes) for every file resource."""
        # Iterative depth-first walk; each stack entry is (node index, path).
        stack = [(0, "")]  # node 0 is the unnamed root directory
        seen = set()
        while stack:
            index, path = stack.pop()
            if index in seen:  # guard against malformed, cyclic trees
                continue
            seen.add(index)
            name_off, flags, a, b = self._node(index)
            if flags & FLAG_DIRECTORY:
                child_count, first_child = a, b
                for child in range(first_child, first_child + child_count):
                    child_name = self._name(self._node(child)[0])
                    stack.append((child, path + "/" + child_name if path else child_name))
            else:
                yield path, self._data(b, flags)


def _safe_join(root, rel):
    """Join rel under root, refusing absolute paths and '..' components."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError("refusing unsafe resource path %r" % rel)
    return os.path.join(root, *parts)


def extract(rcc_path, out_dir):
    with open(rcc_path, "rb") as f:
        reader = RccReader(f.read())
    count = 0
    for rel, data in reader.walk():
        dest = _safe_join(out_dir, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
        count += 1
    return count


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: %s RCC_FILE OUT_DIR\n" % argv[0])
        return 2
    n = extract(argv[1], argv[2])
    print("%s: %d files" % (argv[1], n))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
