#!/usr/bin/env bash
# Rebuild tests/data/ (small set of real, CC0 / public-domain colour photos)
# from two pinned registry packages:
#
#   * PyPI   scikit-image==0.26.0   (skimage/data/*.png|jpg)
#   * Debian gcompris-qt-data 3.1-2 (photos inside Qt .rcc bundles, unpacked
#                                    with scripts/extract_rcc.py)
#
# The output is committed; CI does not run this script.  It documents where
# every file came from and lets anyone regenerate the set.
#
# Usage:  scripts/make-test-data.sh [OUT_DIR]        (default: tests/data)
#
# Environment:
#   LOOKALIKE_DATA_CACHE  download/extract cache
#                         (default: ${XDG_CACHE_HOME:-~/.cache}/lookalike-test-data)
#   PYTHON                python3 used to create the cache venv (default: python3)
#
# Shared helpers (GCompris README parser, sRGB conversion, dHash, ...) are in
# scripts/lookalike_data.py.
#
# Needs: python3 (with venv + pip), network access to PyPI and a Debian
# mirror, and either `apt-get download` (Debian bookworm sources) or curl;
# dpkg-deb or ar+tar to unpack the .deb.
#
# Idempotent: downloads are verified by SHA-256 and reused, extraction is
# skipped when already done, and output files are only rewritten when their
# bytes change.  Every source file is checked against a pinned SHA-256, every
# GCompris licence is re-read from the package's own README and must be
# CC0-1.0 or public domain, and the set is checked for duplicate / near-
# duplicate photos.  tests/data/README.md is generated.
#
# Processing: chelsea.png, coffee.png and rocket.jpg are copied byte for byte.
# Everything else is converted to sRGB (embedded ICC profiles are applied),
# downscaled with Lanczos so the longest side is <= 640 px (never upscaled),
# and saved as baseline JPEG quality 90 without metadata.  Pillow is pinned
# so the JPEG bytes are reproducible.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="$(realpath -m "${1:-$ROOT/tests/data}")"
CACHE="${LOOKALIKE_DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lookalike-test-data}"
PYTHON="${PYTHON:-python3}"

SKIMAGE_VERSION=0.26.0
GCOMPRIS_PKG=gcompris-qt-data
GCOMPRIS_VERSION=3.1-2
GCOMPRIS_DEB="${GCOMPRIS_PKG}_${GCOMPRIS_VERSION}_all.deb"
GCOMPRIS_DEB_SHA256=e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f
GCOMPRIS_DEB_URL="https://deb.debian.org/debian/pool/main/g/gcompris-qt/$GCOMPRIS_DEB"
PILLOW_VERSION=13.0.0
# The .rcc bundles that hold the selected photos.
GCOMPRIS_RCCS=(categorization explore_monuments explore_farm_animals explore_world_animals erase)

mkdir -p "$CACHE" "$OUT_DIR"
log() { printf '==> %s\n' "$*" >&2; }

# --- Python with a pinned Pillow ---------------------------------------------
VENV="$CACHE/venv"
if ! "$VENV/bin/python" -c "import PIL, sys; sys.exit(PIL.__version__ != '$PILLOW_VERSION')" 2>/dev/null; then
    log "creating venv with Pillow==$PILLOW_VERSION in $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "Pillow==$PILLOW_VERSION"
fi
PY="$VENV/bin/python"

# --- scikit-image wheel ------------------------------------------------------
# The data files are identical in every wheel; pin one platform so the same
# file is fetched everywhere.  Source files are checked by hash later.
SKI_DIR="$CACHE/pypi"
if ! compgen -G "$SKI_DIR/scikit_image-$SKIMAGE_VERSION-*.whl" >/dev/null; then
    log "pip download scikit-image==$SKIMAGE_VERSION"
    "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
        --implementation cp -d "$SKI_DIR" "scikit-image==$SKIMAGE_VERSION"
fi
SKI_WHL="$(compgen -G "$SKI_DIR/scikit_image-$SKIMAGE_VERSION-*.whl" | head -n1)"
SKI_EXTRACT="$CACHE/skimage-$SKIMAGE_VERSION"
if [ ! -e "$SKI_EXTRACT/.done" ]; then
    log "unpacking skimage/data from $(basename "$SKI_WHL")"
    rm -rf "$SKI_EXTRACT"
    "$PY" - "$SKI_WHL" "$SKI_EXTRACT" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("skimage/data/")])
EOF
    touch "$SKI_EXTRACT/.done"
fi

# --- gcompris-qt-data .deb ---------------------------------------------------
DEB_DIR="$CACHE/deb"
DEB="$DEB_DIR/$GCOMPRIS_DEB"
mkdir -p "$DEB_DIR"
deb_ok() { [ -f "$DEB" ] && echo "$GCOMPRIS_DEB_SHA256  $DEB" | sha256sum -c --quiet - 2>/dev/null; }
if ! deb_ok; then
    rm -f "$DEB"
    log "downloading $GCOMPRIS_DEB"
    # apt-get download needs a Debian bookworm apt source; otherwise fall back
    # to the pool URL.  (Once 3.1-2 leaves the archive it is still available
    # from https://snapshot.debian.org/.)
    (cd "$DEB_DIR" && apt-get download "$GCOMPRIS_PKG=$GCOMPRIS_VERSION") 2>/dev/null \
        || curl -fsSL -o "$DEB" "$GCOMPRIS_DEB_URL"
    deb_ok || { echo "checksum mismatch for $DEB" >&2; exit 1; }
fi
DEB_EXTRACT="$CACHE/gcompris-deb"
if [ ! -e "$DEB_EXTRACT/.done" ]; then
    log "unpacking $GCOMPRIS_DEB"
    rm -rf "$DEB_EXTRACT" && mkdir -p "$DEB_EXTRACT"
    if command -v dpkg-deb >/dev/null; then
        dpkg-deb -x "$DEB" "$DEB_EXTRACT"
    else
        (cd "$DEB_EXTRACT" && ar p "$DEB" data.tar.xz | tar -xJ)
    fi
    touch "$DEB_EXTRACT/.done"
fi
RCC_DIR="$DEB_EXTRACT/usr/share/gcompris-qt/rcc"
RCC_EXTRACT="$CACHE/gcompris-extract"
for rcc in "${GCOMPRIS_RCCS[@]}"; do
    if [ ! -e "$RCC_EXTRACT/$rcc/.done" ]; then
        rm -rf "${RCC_EXTRACT:?}/$rcc"
        "$PY" "$ROOT/scripts/extract_rcc.py" "$RCC_DIR/$rcc.rcc" "$RCC_EXTRACT/$rcc" >&2
        touch "$RCC_EXTRACT/$rcc/.done"
    fi
done

# --- selection ---------------------------------------------------------------
# output | class | source | sha256 of the source file | author | licence
#
# source is  skimage:<path in the wheel>  or  <bundle>.rcc:/<path in bundle>
# (bundles live in /usr/share/gcompris-qt/rcc/ of the .deb).  For GCompris
# files author and licence are "-": they are read from the README next to the
# image inside the bundle.  For skimage they are copied from the docstrings in
# skimage/data/_fetchers.py (chelsea, coffee, astronaut, rocket).
C=gcompris/src/activities/categorization/resource/images
M=gcompris/src/activities/explore_monuments/resource
F=gcompris/src/activities/explore_farm_animals/resource/animals
W=gcompris/src/activities/explore_world_animals/resource/animals
E=gcompris/src/activities/erase/resource
MANIFEST="$(cat <<EOF
chelsea.png|cat|skimage:skimage/data/chelsea.png|596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb|Stefan van der Walt|CC0 ("No copyright restrictions. CC0 by the photographer")
coffee.png|espresso cup|skimage:skimage/data/coffee.png|cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7|Rachel Michetti (courtesy of Pikolo Espresso Bar)|CC0 ("No copyright restrictions. CC0 by the photographer")
skimage-astronaut.jpg|person (astronaut)|skimage:skimage/data/astronaut.png|88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5|NASA (NASA Great Images database)|Public domain ("No known copyright restrictions, released into the public domain")
skimage-rocket.jpg|rocket launch|skimage:skimage/data/rocket.jpg|c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c|SpaceX|Public domain ("released in the public domain" by SpaceX)
fish-clownfish.jpg|fish|categorization.rcc:/$C/fishes/fish9.webp|c0612ddd79d51bd6ee9ce0f5b0e930b55e13bc78deb6c8a282be4d9cf89189a5|-|-
fish-goldfish.jpg|fish|categorization.rcc:/$C/fishes/fish25.webp|a0d5498bf18d05d25b021ad4fbf9e5752d8fbdfde1f94ff58c0d6b4e6c9ae23f|-|-
fish-spotted-puffer.jpg|fish|categorization.rcc:/$C/fishes/fish28.webp|5cb9d4a067b98215cfbc00e7d0d797017a6cef4e1498e2a3422bbc6b1ef63ed6|-|-
fish-discus.jpg|fish|categorization.rcc:/$C/fishes/fish6.webp|c372f0c9896c69cc1e892c03bc6dd923723d3ab66720ff2c935449188d6cc060|-|-
fish-french-angelfish.jpg|fish|categorization.rcc:/$C/fishes/fish1.webp|f8da0956fd2df8f98a61a4672a1123009cfdc28fc685de6a20bc495dbf1e7771|-|-
monument-eiffel-tower-1.jpg|monument|categorization.rcc:/$C/monuments/eiffelTower.webp|159e79086eb976949bc616a542be0d331ce689275fbbc4c3cf34af3e0e6bca1d|-|-
monument-eiffel-tower-2.jpg|monument|explore_monuments.rcc:/$M/france/eiffelTower.webp|cf115ede228937f0dfea0ffd7efa5fa24a948f388091ce1a123e7636b25c080b|-|-
monument-statue-of-liberty-1.jpg|monument|categorization.rcc:/$C/monuments/statueOfLiberty.webp|0f96367a893458a491feaa437e639b20b3e833981fa873123ccde98636d7abb0|-|-
monument-statue-of-liberty-2.jpg|monument|explore_monuments.rcc:/$M/usa/statueofLiberty.webp|8eeda3c92c734520b4b7865eb04a900402a329890064058bcb4448d21669a3a8|-|-
monument-taj-mahal.jpg|monument|categorization.rcc:/$C/monuments/tajMahal.webp|d38d14e765824d7a4cd0b6c200731b96ea7b33cf6ee933b2fe248d454f87d271|-|-
monument-colosseum.jpg|monument|explore_monuments.rcc:/$M/wonders/colosseum.webp|0d38a0c2d4910f895c003825999345a86da080ff76d709bba923153cbd654945|-|-
monument-great-pyramid.jpg|monument|explore_monuments.rcc:/$M/egypt/greatPyramidOfGiza.webp|f8427c09579493e7918d00134423ed40140c2f3fa09fb13341d3c1a0640fc1e9|-|-
tool-hammer-1.jpg|tool (hammer)|categorization.rcc:/$C/tools/hammer5.webp|1f4a276ac27a8136dfe35bf9b886ad74d583f7229edae98834d4a6760781a39d|-|-
tool-hammer-2.jpg|tool (hammer)|categorization.rcc:/$C/tools/hammer1.webp|674fbce6f91b65e2da969107c4648e57dc35c859aeda7b13554c0a685cb8efa9|-|-
tool-hammer-3.jpg|tool (hammer)|categorization.rcc:/$C/tools/hammer8.webp|f516647d8f6d90f56e5ee5c54424c517062524e404f171b6991cc14868e3186b|-|-
tool-scissors-1.jpg|tool (scissors)|categorization.rcc:/$C/tools/scissors1.webp|0aa0b5e6b8cd17ec7b46caf13360167cf301e22936aba65bdfa7850f728cdbe6|-|-
tool-scissors-2.jpg|tool (scissors)|categorization.rcc:/$C/tools/scissors2.webp|ebea0e41fbab5b01f266818e64154a9c22d28df3dc97eb411a192acbdb2055a1|-|-
tool-screwdriver.jpg|tool (screwdriver)|categorization.rcc:/$C/tools/screwDriver1.webp|8ca5030b12163c5cc924cc7d0883cd6d8e0f837b9141a0344777214e060020e3|-|-
tool-pliers.jpg|tool (pliers)|categorization.rcc:/$C/tools/plier1.webp|a7bf094e741e55236da36b15e43f0c83d86794ab7c56076eb345216932c727ec|-|-
windmill-kinderdijk.jpg|windmill|categorization.rcc:/$C/renewable/windmill13.webp|c4f9425d5b98186aecab73e4ca0ff6010b4f138fd609e95f26af40a4974b6ec9|-|-
windmill-mykonos.jpg|windmill|categorization.rcc:/$C/renewable/windmill3.webp|da254fb000c28e2cf4c9208b52849d1141895c25937e1abf4d37b8a725d25b1e|-|-
windmill-post-mill.jpg|windmill|categorization.rcc:/$C/renewable/windmill5.webp|c6c35dbdbc5aee60e093d1f969c599151d2c557c6992fbbcf755dc7e6fae9abc|-|-
solar-panel-1.jpg|solar panel|categorization.rcc:/$C/renewable/solar7.webp|5118a3f9ea3fb8a38cf102fa895dd891d30b34783b7528f36435b419215bbbe3|-|-
solar-panel-2.jpg|solar panel|categorization.rcc:/$C/renewable/solar6.webp|920ba181909040dda1d68da48db3198beedaa73fadef76d960c8db249482f3ec|-|-
household-cup.jpg|cup|categorization.rcc:/$C/others/cup.webp|71544b12419fef334803ba47874648d898b8c04b0fc3d45946ea58db33cf0aff|-|-
animal-cat-kitten.jpg|animal (cat)|explore_farm_animals.rcc:/$F/cat.webp|ab7c3e1b04e80bc567b00dba49946918b5a38be1f37618f0d2b4887ef5792770|-|-
animal-dog-german-shepherd.jpg|animal (dog)|explore_farm_animals.rcc:/$F/dog.webp|5e9d9544495740101e4cfff817d986b683731112b2cf17fde2e4c2a26c3c5314|-|-
animal-cow.jpg|animal (cow)|explore_farm_animals.rcc:/$F/cow.webp|db359136be5ef7c435a2521e7f782a7f13ab48634f8a955864b1557ca21926db|-|-
animal-sheep.jpg|animal (sheep)|explore_farm_animals.rcc:/$F/sheep.webp|3bac61d5dabb709cdea2511f63bab6bfcde9736536a39f1f7510f5258a75b088|-|-
animal-giraffe-1.jpg|animal (giraffe)|explore_world_animals.rcc:/$W/giraffe.webp|68014ed783cf6a8b8c9c4202cf2c467a34819dab08bf566e93d5fcd872e41f5c|-|-
animal-giraffe-2.jpg|animal (giraffe)|erase.rcc:/$E/giraffe.webp|c39106edc785a65bf0eee10bf039375b2fc3f72b405d76fec392a1a40b39d4f0|-|-
animal-panda.jpg|animal (giant panda)|explore_world_animals.rcc:/$W/panda.webp|70ccf9a9db5008100eb6955ae25fabd4f7769427be784d627cf6315f6dfce692|-|-
animal-polar-bear.jpg|animal (polar bear)|explore_world_animals.rcc:/$W/polar_bear.webp|0544cef0a7d6940d3c143a04eecb7065bf9b90d7d367ad8bacbef6631b506070|-|-
bird-kingfisher.jpg|bird|erase.rcc:/$E/kingfisher.webp|b637658d7e0f8f555b5683a8c912646d57ba37be6ba9684df893a1d07ee9e637|-|-
bird-scarlet-macaw.jpg|bird|explore_world_animals.rcc:/$W/scarlet_macaw.webp|8b088ed71a87e7e929cf08b49a1e1c977c47544307d348e52a0f4a85128662a0|-|-
bird-duck.jpg|bird|explore_farm_animals.rcc:/$F/duck.webp|fa4572f2022a3aded4b627b9234fb8abf1658d125b267dc8d28cb1a8213c3b60|-|-
EOF
)"

# --- build -------------------------------------------------------------------
log "writing $OUT_DIR"
MANIFEST="$MANIFEST" PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$OUT_DIR" "$SKI_EXTRACT" "$RCC_EXTRACT" \
    "$SKIMAGE_VERSION" "$GCOMPRIS_PKG" "$GCOMPRIS_VERSION" <<'PYEOF'
import hashlib, io, os, re, sys
from PIL import Image
from lookalike_data import (dhash, find_readme, is_free_licence, parse_gcompris_readme,
                            readme_licence, to_srgb, write_if_changed)

out_dir, ski_root, rcc_root, ski_ver, gc_pkg, gc_ver = sys.argv[1:7]
MAX_SIDE = 640
VERBATIM = {"chelsea.png", "coffee.png", "skimage-rocket.jpg"}  # copied byte for byte
# Upstream sources named in skimage/data/_fetchers.py.
SKI_SOURCE = {
    "chelsea.png": "skimage.data.chelsea()",
    "coffee.png": "skimage.data.coffee()",
    "astronaut.png": "skimage.data.astronaut(): https://flic.kr/p/r9qvLn",
    "rocket.jpg": "skimage.data.rocket(): https://www.flickr.com/photos/spacexphotos/16511594820/",
}


rows, seen_src, hashes = [], {}, {}
for line in os.environ["MANIFEST"].strip().splitlines():
    out, cls, src, sha, author, licence = line.split("|")
    if src.startswith("skimage:"):
        rel = src[len("skimage:"):]
        path = os.path.join(ski_root, rel)
        package = "PyPI scikit-image %s" % ski_ver
        orig = rel
        url = SKI_SOURCE.get(os.path.basename(rel), "")
    else:
        bundle, rel = src.split(":", 1)
        path = os.path.join(rcc_root, bundle[:-len(".rcc")], rel.lstrip("/"))
        package = "Debian %s %s" % (gc_pkg, gc_ver)
        orig = "usr/share/gcompris-qt/rcc/%s:%s" % (bundle, rel)
        readme = find_readme(path, rcc_root)
        meta = parse_gcompris_readme(readme).get(os.path.relpath(path, os.path.dirname(readme)))
        if meta is None:
            raise SystemExit("%s is not listed in %s" % (path, readme))
        author, licence, url = meta.get("Copyright", "?"), readme_licence(meta), meta.get("Source", "")
        if not is_free_licence(licence):
            raise SystemExit("%s: licence %r is not CC0/public domain" % (src, licence))
        if meta.get("Comments"):
            url = (url + " (GCompris: %s)" % meta["Comments"]).strip()

    raw = open(path, "rb").read()
    got = hashlib.sha256(raw).hexdigest()
    if got != sha:
        raise SystemExit("%s: sha256 %s, expected %s" % (src, got, sha))
    if got in seen_src:
        raise SystemExit("%s and %s are the same file" % (seen_src[got], out))
    seen_src[got] = out

    if out in VERBATIM:
        data = raw
        im = Image.open(io.BytesIO(raw))
        im.load()
        if max(im.size) > MAX_SIDE:
            raise SystemExit("%s is copied verbatim but larger than %d px" % (out, MAX_SIDE))
        note = "unmodified copy"
    else:
        im = to_srgb(Image.open(path))
        w, h = im.size
        if max(w, h) > MAX_SIDE:
            s = MAX_SIDE / max(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
            note = "downscaled %dx%d -> %dx%d, JPEG q90" % (w, h, im.size[0], im.size[1])
        else:
            note = "re-encoded %dx%d, JPEG q90" % (w, h)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90, optimize=True)
        data = buf.getvalue()

    # Near-duplicate guard: the same photo must not appear twice.
    h = dhash(im)
    for other, oh in hashes.items():
        if bin(h ^ oh).count("1") <= 6:
            raise SystemExit("%s looks like the same photo as %s" % (out, other))
    hashes[out] = h

    changed = write_if_changed(os.path.join(out_dir, out), data)
    print("%s %-34s %s" % ("*" if changed else " ", out, note), file=sys.stderr)
    rows.append((out, cls, orig, package, author, licence, url, note))

# Warn about files that are not produced by this script.
known = {r[0] for r in rows} | {"README.md"}
for f in sorted(os.listdir(out_dir)):
    if f not in known:
        print("note: %s/%s is not listed in scripts/make-test-data.sh" % (out_dir, f), file=sys.stderr)

# Class groups: by file-name prefix (chelsea.png is a cat, coffee.png a cup),
# then the same subject photographed twice or more (name minus "-N").
ALIAS = {"chelsea.png": "cat", "coffee.png": "cup", "animal-cat-kitten.jpg": "cat",
         "household-cup.jpg": "cup"}
groups = {}
for r in rows:
    key = ALIAS.get(r[0], r[0].split("-")[0])
    if key != "skimage":
        groups.setdefault(key, []).append(r[0])
for r in rows:
    m = re.match(r"^(.*)-\d+\.jpg$", r[0])
    if m:
        groups.setdefault("same subject: " + m.group(1), []).append(r[0])
groups = sorted(groups.items(), key=lambda kv: (kv[0].startswith("same"), kv[0]))

esc = lambda s: s.replace("|", "\\|")
md = ["# Test images", "",
      "Real colour photographs (no drawings or synthetic images) used by the tests.",
      "Generated by `scripts/make-test-data.sh` (which uses `scripts/extract_rcc.py`",
      "to unpack the GCompris Qt resource bundles) from two pinned registry packages:",
      "PyPI `scikit-image==%s` and Debian `%s` %s. Do not edit by hand." % (ski_ver, gc_pkg, gc_ver),
      "",
      "`chelsea.png` (a cat) and `coffee.png` (an espresso cup) are byte-for-byte",
      "copies of the scikit-image files, and `skimage-rocket.jpg` is an unmodified copy of",
      "`rocket.jpg`. Every other file was converted to sRGB, downscaled (Lanczos)",
      "so that its longest side is at most %d px, and saved as JPEG quality 90" % MAX_SIDE,
      "without metadata; GCompris had already shrunk its images (most to 320 px),",
      "and the Upstream source column notes any crop GCompris made.",
      "",
      "Licences: only files marked CC0 or public domain were used. For GCompris,",
      "author and licence come from the `README` next to each image inside the",
      "`.rcc` bundle (the package's `debian/copyright` predates the current images",
      "and is out of date for them); for scikit-image, from the docstrings in",
      "`skimage/data/_fetchers.py`. They are quoted as given and were not",
      "checked again against the original pages.",
      "",
      "Original paths are inside the package; `X.rcc:/path` is a file inside the",
      "Qt resource bundle `X.rcc`.",
      "",
      "Several different photos of one class (for \"same class, different",
      "photo\" tests); all are distinct photographs, authors are in the table:",
      ""] + ["- %s: %s" % (c, ", ".join("`%s`" % f for f in fs)) for c, fs in groups if len(fs) > 1] + [
      "",
      "| File | Class | Original path | Package | Author (as given) | Licence | Upstream source | Processing |",
      "|---|---|---|---|---|---|---|---|"]
for r in rows:
    md.append("| " + " | ".join(esc(x) if x else "" for x in
              ("`%s`" % r[0], r[1], "`%s`" % r[2], r[3], r[4], r[5], r[6], r[7])) + " |")
md.append("")
write_if_changed(os.path.join(out_dir, "README.md"), "\n".join(md).encode("utf-8"))
total = sum(os.path.getsize(os.path.join(out_dir, r[0])) for r in rows)
print("%d images, %.2f MB" % (len(rows), total / 1e6), file=sys.stderr)
PYEOF
