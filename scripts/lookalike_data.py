"""Helpers shared by the data scripts (``make-test-data.sh``, ``fetch-datasets.sh``).

Needs Pillow (both scripts run it from their cache venv with a pinned Pillow).
The scripts import it with ``sys.path.insert(0, "<repo>/scripts")``.
"""

import hashlib
import io
import os
import re

from PIL import Image, ImageCms

# Licence strings (lower-cased, as written in GCompris READMEs) accepted as
# "CC0 or public domain".
FREE_LICENCES = {"public domain", "cc0-1.0"}


def parse_gcompris_readme(path):
    """Map file name -> {Copyright, Source, License, ...} from a GCompris README.

    Blocks are separated by blank lines; "Files:" is followed by names on the
    same line and/or on the following lines.
    """
    info = {}
    blocks = re.split(r"\n\s*\n", open(path, encoding="utf-8").read())
    for block in blocks:
        fields, files, key = {}, [], None
        for line in block.splitlines():
            m = re.match(r"^([A-Za-z]+):\s*(.*)$", line)
            if m:
                key, val = m.group(1), m.group(2).strip()
                if key == "Files":
                    files += val.split()
                else:
                    fields[key] = val
            elif key == "Files":
                files += line.split()
            elif key and line.strip():
                fields[key] = (fields.get(key, "") + " " + line.strip()).strip()
        for f in files:
            info[f] = fields
    return info


def readme_licence(meta):
    """The licence of a parse_gcompris_readme() entry ("License:" or "Licence:")."""
    return meta.get("License", meta.get("Licence", "?"))


def is_free_licence(licence):
    """True for the licences the data sets accept: CC0-1.0 or public domain."""
    return licence.strip().lower() in FREE_LICENCES


def find_readme(img_path, root):
    """The README closest to the image (same directory or a parent, below root)."""
    d = os.path.dirname(img_path)
    while len(d) > len(root):
        if os.path.isfile(os.path.join(d, "README")):
            return os.path.join(d, "README")
        d = os.path.dirname(d)
    raise SystemExit("no README for %s" % img_path)


def to_srgb(im):
    """RGB image in sRGB: apply an embedded ICC profile, drop alpha."""
    icc = im.info.get("icc_profile")
    im = im.convert("RGB")
    if icc:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        im = ImageCms.profileToProfile(im, src, dst, renderingIntent=0, outputMode="RGB")
    return im


def dhash(im, size=8):
    """64-bit difference hash (near-duplicate check: Hamming distance <= ~6)."""
    px = im.convert("L").resize((size + 1, size), Image.LANCZOS).tobytes()
    return sum(1 << i for i in range(size * size)
               if px[(i // size) * (size + 1) + i % size] > px[(i // size) * (size + 1) + i % size + 1])


def pixel_sha256(im):
    """SHA-256 of the decoded pixels (mode, size and bytes), format-independent."""
    h = hashlib.sha256()
    h.update(("%s %dx%d\n" % (im.mode, im.size[0], im.size[1])).encode())
    h.update(im.tobytes())
    return h.hexdigest()


def write_if_changed(path, data):
    """Write bytes atomically unless the file already holds them; True if written."""
    if os.path.exists(path) and open(path, "rb").read() == data:
        return False
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True
