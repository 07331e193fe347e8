#!/usr/bin/env bash
# Fetch the evaluation / training image sets (NOT committed; OUT_DIR is
# git-ignored) from pinned registry packages:
#
#   * Debian gcompris-qt-data 3.1-2   real photos inside Qt .rcc bundles,
#                                     unpacked with scripts/extract_rcc.py;
#                                     CC0 / public domain only, licence read
#                                     from the README next to each image
#   * Debian scratch 1.4.0.6~dfsg1-6.1
#                                     real photos among Media/Backgrounds
#                                     (CC-BY-SA-3.0, MIT; drawings dropped)
#   * PyPI   scikit-image==0.26.0     colour photos of skimage/data
#                                     (the CC0 / public-domain ones tests/data uses)
#   * Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1
#                                     (optional, --with-fashion-mnist; MIT)
#
# Usage:  scripts/fetch-datasets.sh [--with-fashion-mnist] [OUT_DIR]
#                                   (default OUT_DIR: <repo>/datasets)
#
# Output:
#   OUT/classes/<class>/<file>        photos by category ("same class,
#                                     different photo"), one photo once per set
#   OUT/near-dup-bases/<file>         bases for near-duplicate evaluation:
#                                     GCompris photos >= 1024 px, skimage photos
#   OUT/fashion-mnist/<class>/<idx>.png
#                                     70,000 28x28 grey product photos (idx:
#                                     00000-59999 upstream train, 60000-69999 test)
#   OUT/manifest.tsv                  path, set, label, source_package
#                                     (name=version), licence, author, sha256
#                                     (of the file), original (path in the
#                                     package), upstream (source URL)
#   OUT/splits.tsv                    path, split (train|val), group: every
#                                     classes/ and near-dup-bases/ photo;
#                                     ~25 % val, from a hash of the content.
#                                     Copies of one photo (same pixels, same
#                                     upstream source, or dHash distance <= 6)
#                                     share a group and so a split, in both sets.
#   OUT/README.md                     summary and attributions
#
# Files are JPEG or PNG: JPEG and PNG sources are copied byte for byte, WebP
# is converted to sRGB JPEG quality 92 and GIF to PNG, at the original size.
# Duplicates inside a set (same decoded pixels, or the same upstream photo at
# another size: the largest is kept) are dropped.
#
# Environment:
#   LOOKALIKE_DATA_CACHE  download/extract cache and venv
#                         (default: ~/.cache/lookalike-datasets)
#   PYTHON                python3 used to create the cache venv (default: python3)
#
# Needs: python3 (venv + pip), network access to PyPI and a Debian mirror,
# and `apt-get download` (Debian bookworm sources; `apt-get update` is run
# when the package lists lack a package) or curl; dpkg-deb or ar+tar.
#
# Pins: every package is pinned (Debian packages also by SHA-256).  When a
# pinned version cannot be fetched, the script warns and falls back to
# whatever version the registry has; manifest.tsv records the versions used.
#
# Idempotent: downloads and extractions are cached, and output files are only
# rewritten when their bytes change; files a previous run wrote that are no
# longer selected are removed.  Without --with-fashion-mnist an existing
# OUT/fashion-mnist/ is left alone and kept in the manifest.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

WITH_FASHION_MNIST=0
OUT_ARG=
for arg in "$@"; do
    case "$arg" in
        --with-fashion-mnist) WITH_FASHION_MNIST=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
        *) [ -z "$OUT_ARG" ] || { echo "more than one OUT_DIR" >&2; exit 2; }; OUT_ARG=$arg ;;
    esac
done
OUT_DIR="$(realpath -m "${OUT_ARG:-$ROOT/datasets}")"
CACHE="$(realpath -m "${LOOKALIKE_DATA_CACHE:-$HOME/.cache/lookalike-datasets}")"
PYTHON="${PYTHON:-python3}"

PILLOW_VERSION=13.0.0
NUMPY_VERSION=2.4.6
SKIMAGE_VERSION=0.26.0
# name  version  SHA-256 of the .deb  pool directory on deb.debian.org
GCOMPRIS_DEB=(gcompris-qt-data 3.1-2
    e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f pool/main/g/gcompris-qt)
SCRATCH_DEB=(scratch 1.4.0.6~dfsg1-6.1
    36c582eb93110f64f06c4e685c41e933ccba2fa68db12f79b10bfe840b21fc10 pool/main/s/scratch)
FASHION_DEB=(dataset-fashion-mnist 0.0~git20200523.55506a9-1
    39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0 pool/main/d/dataset-fashion-mnist)
# The GCompris .rcc bundles that hold the selected photos.
GCOMPRIS_RCCS=(categorization explore_monuments explore_farm_animals explore_world_animals
               erase clickgame explore_world_music)

START=$SECONDS
mkdir -p "$CACHE" "$OUT_DIR"
log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }

# --- Python with pinned Pillow and numpy -------------------------------------
VENV="$CACHE/venv"
PY="$VENV/bin/python"
VENV_STAMP="$VENV/.lookalike-pins"
VENV_WANT="Pillow==$PILLOW_VERSION numpy==$NUMPY_VERSION"
if ! { [ "$(cat "$VENV_STAMP" 2>/dev/null)" = "$VENV_WANT" ] \
       && "$PY" -c 'import PIL, numpy' 2>/dev/null; }; then
    log "creating venv with $VENV_WANT in $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    for req in $VENV_WANT; do
        if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "$req"; then
            warn "could not install $req; falling back to the newest ${req%%==*}"
            "$VENV/bin/pip" install --quiet --disable-pip-version-check "${req%%==*}"
        fi
    done
    echo "$VENV_WANT" > "$VENV_STAMP"
fi

# --- Debian packages ---------------------------------------------------------
DEB_DIR="$CACHE/deb"
mkdir -p "$DEB_DIR"
# `apt-get update` runs at most once per run (fetch_deb runs in subshells).
APT_UPDATED_MARK="$DEB_DIR/.apt-updated.$$"
trap 'rm -f "$APT_UPDATED_MARK"' EXIT

sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum -c --quiet - >/dev/null 2>&1; }

# apt_lists_have NAME[=VERSION]: the apt package lists know it.
apt_lists_have() {
    local name=${1%%=*} ver='' out
    [[ $1 != *=* ]] || ver=${1#*=}
    out="$(apt-cache madison "$name" 2>/dev/null)" && [ -n "$out" ] || return 1
    [ -z "$ver" ] || awk -F'|' '{gsub(/ /, "", $2); print $2}' <<<"$out" | grep -qxF -- "$ver"
}

# apt_download SPEC: `apt-get download SPEC` into $DEB_DIR; prints the file.
# When the package lists do not know the package (or the pinned version),
# runs `apt-get update` once and tries again.
apt_download() {
    local spec=$1 tmp errlog f
    command -v apt-get >/dev/null || return 1
    tmp="$(mktemp -d "$DEB_DIR/.apt.XXXXXX")"
    errlog="$tmp/.log"
    chmod 755 "$tmp"  # lets the _apt sandbox user write there
    if ! (cd "$tmp" && apt-get download "$spec") >"$errlog" 2>&1; then
        if [ ! -e "$APT_UPDATED_MARK" ] && ! apt_lists_have "$spec"; then
            log "apt lists lack $spec: apt-get update"
            touch "$APT_UPDATED_MARK"
            local sudo=
            [ "$(id -u)" = 0 ] || sudo="sudo -n"
            $sudo apt-get update -qq >&2 || warn "apt-get update failed"
            (cd "$tmp" && apt-get download "$spec") >"$errlog" 2>&1 || true
        fi
    fi
    f="$(compgen -G "$tmp/*.deb" | head -n1 || true)"
    if [ -z "$f" ]; then
        sed 's/^/    apt: /' "$errlog" >&2
        rm -rf "$tmp"
        return 1
    fi
    mv "$f" "$DEB_DIR/" && rm -rf "$tmp"
    echo "$DEB_DIR/$(basename "$f")"
}

# fetch_deb NAME VERSION SHA256 POOL_DIR: prints the path of the .deb, pinned
# version if at all possible (cache, apt-get download, deb.debian.org pool),
# else the registry's current version (with a warning).
fetch_deb() {
    local name=$1 ver=$2 sha=$3 pool=$4 deb f
    deb="$DEB_DIR/${name}_${ver}_all.deb"
    if sha_ok "$deb" "$sha"; then echo "$deb"; return; fi
    rm -f "$deb"
    log "downloading $name=$ver"
    f="$(apt_download "$name=$ver" || true)"
    if [ -n "$f" ] && [ "$f" != "$deb" ]; then mv "$f" "$deb"; fi
    if ! sha_ok "$deb" "$sha"; then
        rm -f "$deb"
        # (Once it leaves the archive, https://snapshot.debian.org/ still has it.)
        if curl -fsSL -o "$deb.part" "https://deb.debian.org/debian/$pool/${name}_${ver}_all.deb"; then
            mv "$deb.part" "$deb"
        else
            rm -f "$deb.part"
        fi
    fi
    if sha_ok "$deb" "$sha"; then echo "$deb"; return; fi
    [ ! -f "$deb" ] || { warn "$deb: SHA-256 mismatch"; rm -f "$deb"; }
    warn "$name=$ver is not available; falling back to the current $name"
    f="$(apt_download "$name")" || { echo "cannot download $name" >&2; return 1; }
    warn "using $(basename "$f") instead of $name=$ver"
    echo "$f"
}

deb_version() { dpkg-deb -f "$1" Version 2>/dev/null || basename "$1" | cut -d_ -f2; }

# unpack_deb DEB: extracts into the cache once; prints the directory.
unpack_deb() {
    local deb=$1 dir
    dir="$CACHE/pkg/$(basename "$deb" .deb)"
    if [ ! -e "$dir/.done" ]; then
        log "unpacking $(basename "$deb")"
        rm -rf "$dir" && mkdir -p "$dir"
        if command -v dpkg-deb >/dev/null; then
            dpkg-deb -x "$deb" "$dir"
        else
            local member unpack
            member="$(ar t "$deb" | grep '^data\.tar')"
            case "$member" in
                *.xz) unpack="xz -dc" ;; *.zst) unpack="zstd -dc" ;;
                *.gz) unpack="gzip -dc" ;; *) unpack="cat" ;;
            esac
            (cd "$dir" && ar p "$deb" "$member" | $unpack | tar -x -f -)
        fi
        touch "$dir/.done"
    fi
    echo "$dir"
}

GC_DEB="$(fetch_deb "${GCOMPRIS_DEB[@]}")"
SC_DEB="$(fetch_deb "${SCRATCH_DEB[@]}")"
GC_VER="$(deb_version "$GC_DEB")"
SC_VER="$(deb_version "$SC_DEB")"
GC_DIR="$(unpack_deb "$GC_DEB")"
SC_DIR="$(unpack_deb "$SC_DEB")"

RCC_EXTRACT="$CACHE/rcc/$(basename "$GC_DEB" .deb)"
for rcc in "${GCOMPRIS_RCCS[@]}"; do
    if [ ! -e "$RCC_EXTRACT/$rcc/.done" ]; then
        rm -rf "${RCC_EXTRACT:?}/$rcc"
        "$PY" "$ROOT/scripts/extract_rcc.py" "$GC_DIR/usr/share/gcompris-qt/rcc/$rcc.rcc" \
            "$RCC_EXTRACT/$rcc" >&2
        touch "$RCC_EXTRACT/$rcc/.done"
    fi
done

FM_DIR='' FM_VER=''
if [ "$WITH_FASHION_MNIST" = 1 ]; then
    FM_DEB="$(fetch_deb "${FASHION_DEB[@]}")"
    FM_VER="$(deb_version "$FM_DEB")"
    FM_DIR="$(unpack_deb "$FM_DEB")"
fi

# --- scikit-image wheel --------------------------------------------------------
# The data files are identical in every wheel; pin one platform so the same
# file is fetched everywhere.
SKI_DIR="$CACHE/pypi"
PIP_DL=("$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps
        --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11
        --implementation cp -d "$SKI_DIR")
SKI_WHL="$(compgen -G "$SKI_DIR/scikit_image-$SKIMAGE_VERSION-*.whl" | head -n1 || true)"
if [ -z "$SKI_WHL" ]; then
    log "pip download scikit-image==$SKIMAGE_VERSION"
    if ! "${PIP_DL[@]}" "scikit-image==$SKIMAGE_VERSION"; then
        warn "scikit-image==$SKIMAGE_VERSION is not available; falling back to the current scikit-image"
        "${PIP_DL[@]}" scikit-image
    fi
    SKI_WHL="$(compgen -G "$SKI_DIR/scikit_image-$SKIMAGE_VERSION-*.whl" | head -n1 || true)"
    [ -n "$SKI_WHL" ] || SKI_WHL="$(compgen -G "$SKI_DIR/scikit_image-*.whl" | sort -V | tail -n1)"
fi
SKI_VER="$(basename "$SKI_WHL" | cut -d- -f2)"
SKI_EXTRACT="$CACHE/skimage-$SKI_VER"
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

# --- build -------------------------------------------------------------------
log "writing $OUT_DIR"
LK_RCC="$RCC_EXTRACT" LK_GC_PKG="${GCOMPRIS_DEB[0]}=$GC_VER" \
LK_SCRATCH="$SC_DIR" LK_SC_PKG="${SCRATCH_DEB[0]}=$SC_VER" \
LK_SKIMAGE="$SKI_EXTRACT" LK_SKI_PKG="scikit-image=$SKI_VER" \
LK_FASHION="$FM_DIR" LK_FM_PKG="${FASHION_DEB[0]}=$FM_VER" \
LK_CONV_CACHE="$CACHE/converted" \
PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$OUT_DIR" <<'PYEOF'
import collections, gzip, hashlib, io, os, re, struct, sys
from fnmatch import fnmatch
from PIL import Image
import PIL
from lookalike_data import (dhash, find_readme, is_free_licence, parse_gcompris_readme,
                            pixel_sha256, readme_licence, to_srgb, write_if_changed)

E = os.environ
out_dir = sys.argv[1]
rcc_root, gc_pkg = E["LK_RCC"], E["LK_GC_PKG"]
sc_root, sc_pkg = E["LK_SCRATCH"], E["LK_SC_PKG"]
ski_root, ski_pkg = E["LK_SKIMAGE"], E["LK_SKI_PKG"]
fm_root, fm_pkg = E["LK_FASHION"], E["LK_FM_PKG"]
conv_cache = E["LK_CONV_CACHE"]
JPEG_QUALITY = 92
NEAR_DUP_MIN_SIDE = 1024  # GCompris photos at least this large are near-dup bases
VAL_PERCENT = 25
DHASH_SAME = 6            # dHash distance at or below which two files are one photo
COLUMNS = ["path", "set", "label", "source_package", "licence", "author", "sha256",
           "original", "upstream"]


def note(msg):
    print("    " + msg, file=sys.stderr)


# --- GCompris ------------------------------------------------------------------
# (bundle, folder inside it, class).  A callable class maps the file name to a
# class, or to None to skip the file.  Every folder was checked by eye: all of
# them hold photographs (drawings are .svg and are skipped), except the
# xfishtank pixel-art fish in clickgame, hence the sea* filter.  Not used:
# solar_system/gravity (processed NASA planet globes on transparent
# backgrounds), details (paintings and CC-BY-SA photos), drawings elsewhere.
A = "gcompris/src/activities/"
GCOMPRIS = [
    ("categorization", A + "categorization/resource/images/fishes", "fish"),
    ("categorization", A + "categorization/resource/images/monuments", "monument"),
    ("categorization", A + "categorization/resource/images/tools", "tool"),
    # windmill*, solar*, dam*, geothermal*
    ("categorization", A + "categorization/resource/images/renewable",
     lambda f: re.match(r"[a-z]+", f).group(0)),
    ("categorization", A + "categorization/resource/images/others", "household"),
    ("explore_monuments", A + "explore_monuments/resource", "monument"),
    ("explore_farm_animals", A + "explore_farm_animals/resource/animals", "animal"),
    ("explore_world_animals", A + "explore_world_animals/resource/animals", "animal"),
    ("erase", A + "erase/resource", "animal"),
    ("clickgame", A + "clickgame/resource", lambda f: "underwater" if f.startswith("sea") else None),
    ("explore_world_music", A + "explore_world_music/resource/music", "music"),
]
# Files whose name is misspelt in their README (same upstream photo).
README_TYPOS = {
    A + "categorization/resource/images/tools/screwDriver.webp": "screDriver.webp",
    A + "explore_monuments/resource/germany/aulaPalatina.webp": "germany/audaPalatina.webp",
}
RASTER = (".webp", ".jpg", ".jpeg", ".png")

# --- Scratch backgrounds ---------------------------------------------------------
# Looked at one by one: photographs are kept, drawings dropped.  Files in the
# folders that are in neither list (another package version) are reported.
SCRATCH_BG = "usr/share/scratch/Media/Backgrounds"
SCRATCH_PHOTOS = {
    "Indoors": "chalkboard.jpg clothing-store.jpg hall.jpg kitchen.jpg the-movies-inside.jpg",
    "Nature": "beach-malibu.jpg canyon.jpg flower-bed.jpg flowers.gif forest.jpg garden-rock.jpg "
              "grand-canyon.jpg gravel-desert.jpg hill.jpg lake.jpg moon.jpg pathway.jpg tree.jpg "
              "water-and-rocks.jpg wave.jpg",
    "Outdoors": "all-sports-mural.jpg atom-playground.jpg bench-with-view.jpg berkeley-mural.jpg "
                "boardwalk.jpg brick-wall-and-stairs.jpg brick-wall2.jpg building-at-mit.jpg "
                "building-fireproof.jpg castle.jpg city-with-water.jpg city-with-water2.jpg "
                "driveway.jpg graffiti.jpg hallway_outdoors.jpg hay_field.jpg houses.jpg mansion.jpg "
                "mural-faro.jpg parking-ramp.jpg pool.jpg route66.jpg silos.jpg the-movies.jpg "
                "train-tracks1.jpg train-tracks2.jpg village.jpg wooden-house.jpg",
    "Sports": "baseball-field.jpg basketball-court1-a.jpg basketball-court1-b.jpg football-field.jpg "
              "playing-field.jpg tennis-backboard.jpg",
}
SCRATCH_DRAWINGS = {
    "Indoors": "bedroom1.gif bedroom2.gif party-room.jpg room1.jpg room2.jpg room3.jpg spotlight-stage.jpg",
    "Nature": "desert.gif stars.gif underwater.gif woods-and-bench.jpg woods.gif",
    "Outdoors": "brick-wall1.jpg night-city-with-street.gif night-city.gif school1.gif school2.jpg "
                "train-tracks3.gif",
    "Sports": "basketball-court2.png",
}

# --- scikit-image ------------------------------------------------------------------
# The colour photographs tests/data uses (CC0 / public domain per the
# docstrings in skimage/data/_fetchers.py; the phrase is checked there).
# file, label, author, licence, phrase in _fetchers.py, upstream
SKIMAGE = [
    ("chelsea.png", "cat", "Stefan van der Walt", "CC0-1.0",
     "CC0 by the photographer (Stefan van der Walt)", "skimage.data.chelsea()"),
    ("coffee.png", "cup", "Rachel Michetti (courtesy of Pikolo Espresso Bar)", "CC0-1.0",
     "CC0 by the photographer (Rachel Michetti)", "skimage.data.coffee()"),
    ("astronaut.png", "person", "NASA (NASA Great Images database)", "Public Domain",
     "No known copyright restrictions, released into the public domain",
     "skimage.data.astronaut(): https://flic.kr/p/r9qvLn"),
    ("rocket.jpg", "rocket", "SpaceX", "Public Domain", "released in the public domain",
     "skimage.data.rocket(): https://www.flickr.com/photos/spacexphotos/16511594820/"),
]

# --- Fashion-MNIST -----------------------------------------------------------------
FM_DIR = "usr/share/datasets/fashion-mnist"
FM_CLASSES = ["t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
              "sneaker", "bag", "ankle-boot"]
FM_UPSTREAM = "https://github.com/zalandoresearch/fashion-mnist"


def dep5_stanza(copyright_path, file_path):
    """(License, Copyright, upstream Source) for file_path from a machine-readable
    debian/copyright: the last matching Files stanza, Source from the header."""
    text = open(copyright_path, encoding="utf-8").read()
    found, source = None, ""
    for block in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in block.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                key = m.group(1)
                fields[key] = m.group(2).strip()
            elif key and line.startswith(" "):
                fields[key] += "\n" + line.strip()
        if "Format" in fields:
            source = fields.get("Source", "")
        pats = fields.get("Files", "").split()
        if any(fnmatch(file_path, p) for p in pats):
            found = fields
    if not found:
        raise SystemExit("%s: no stanza for %s" % (copyright_path, file_path))
    return found["License"].splitlines()[0], clean(found.get("Copyright", "")), clean(source)


def canonical_licence(licence):
    """CC0-1.0 or Public Domain (GCompris READMEs spell them several ways)."""
    return "CC0-1.0" if licence.strip().lower().startswith("cc0") else "Public Domain"


def clean(s):
    return " ".join(str(s).split())


# --- image conversion ---------------------------------------------------------------
def load(path):
    """(raw bytes, decoded image, content id, dHash) of a source image."""
    raw = open(path, "rb").read()
    im = Image.open(io.BytesIO(raw))
    im.load()
    rgb = im.convert("RGB")
    return raw, im, pixel_sha256(rgb), dhash(rgb)


def output_bytes(raw, im, src_desc):
    """JPEG / PNG bytes for a source: JPEG and PNG verbatim, WebP -> sRGB JPEG
    q92, GIF -> PNG; original size.  Conversions are cached by source hash."""
    if im.format in ("JPEG", "PNG"):
        return raw, ".jpg" if im.format == "JPEG" else ".png"
    ext = ".png" if im.format == "GIF" else ".jpg"
    key = hashlib.sha256(raw).hexdigest()
    cached = os.path.join(conv_cache, "%s-pil%s-q%d%s" % (key, PIL.__version__, JPEG_QUALITY, ext))
    if os.path.exists(cached):
        return open(cached, "rb").read(), ext
    if im.format == "GIF":
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "PNG", optimize=True)
    elif im.format == "WEBP":
        if "A" in im.getbands() and im.getchannel("A").getextrema()[0] < 255:
            note("%s has transparency: composited on white" % src_desc)
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im.convert("RGBA"))
        buf = io.BytesIO()
        to_srgb(im).save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        raise SystemExit("%s: unexpected format %s" % (src_desc, im.format))
    data = buf.getvalue()
    os.makedirs(conv_cache, exist_ok=True)
    write_if_changed(cached, data)
    return data, ext


class Item:
    """A selected source image.  photo_url: the upstream URL of this very photo
    (GCompris READMEs give one per file); files sharing one are the same photo."""

    def __init__(self, src, name, label, package, licence, author, original, upstream, photo_url=""):
        self.src, self.name, self.label, self.package = src, name, label, package
        self.licence, self.author, self.original, self.upstream = licence, author, original, upstream
        self.photo_url = photo_url
        self.raw, self.im, self.cid, self.dh = load(src)
        self.pixels = self.im.size[0] * self.im.size[1]


# --- collect sources ----------------------------------------------------------------
gc_items, skipped = [], collections.Counter()
for bundle, folder, cls in GCOMPRIS:
    base = os.path.join(rcc_root, bundle, folder)
    if not os.path.isdir(base):
        note("missing in this gcompris-qt-data: %s:/%s" % (bundle, folder))
        continue
    for dirpath, dirs, files in os.walk(base):
        dirs.sort()
        for f in sorted(files):
            if not f.lower().endswith(RASTER):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, os.path.join(rcc_root, bundle))
            label = cls(f) if callable(cls) else cls
            if label is None:
                skipped["not a photo"] += 1
                continue
            readme = find_readme(path, os.path.join(rcc_root, bundle))
            key = README_TYPOS.get(rel, os.path.relpath(path, os.path.dirname(readme)))
            info = parse_gcompris_readme(readme)
            meta = info.get(key)
            if meta is None:
                note("no README entry, skipped: %s:/%s" % (bundle, rel))
                skipped["no README entry"] += 1
                continue
            licence = readme_licence(meta)
            if not is_free_licence(licence):
                skipped["licence %s" % clean(licence)] += 1
                continue
            upstream = meta.get("Source", "")
            if not upstream:
                m = re.search(r"https?://\S+", meta.get("Comment", meta.get("Comments", "")))
                upstream = m.group(0) if m else ""
            sub = os.path.relpath(os.path.splitext(path)[0], os.path.dirname(readme))
            name = "gcompris-%s-%s" % (bundle, sub.replace(os.sep, "-"))
            gc_items.append(Item(path, name, label, gc_pkg, canonical_licence(licence),
                                 clean(meta.get("Copyright", "")),
                                 "usr/share/gcompris-qt/rcc/%s.rcc:/%s" % (bundle, rel),
                                 clean(upstream),
                                 # a Source shared by several files is not one photo's
                                 "" if sum(v is meta for v in info.values()) > 1 else clean(upstream)))
note("GCompris: %d CC0 / public-domain photos; skipped: %s"
     % (len(gc_items), ", ".join("%d %s" % (n, k) for k, n in sorted(skipped.items()))))

sc_items = []
sc_copyright = os.path.join(sc_root, "usr/share/doc/scratch/copyright")
sc_licence, sc_author, sc_source = dep5_stanza(sc_copyright, "Media/Backgrounds/Outdoors/castle.jpg")
note("scratch Media/* licence (debian/copyright): %s, %s" % (sc_licence, sc_author))
for folder in sorted(SCRATCH_PHOTOS):
    d = os.path.join(sc_root, SCRATCH_BG, folder)
    photos, drawings = set(SCRATCH_PHOTOS[folder].split()), set(SCRATCH_DRAWINGS[folder].split())
    present = set(os.listdir(d)) if os.path.isdir(d) else set()
    for f in sorted(present - photos - drawings - {"scratchthumbs.db"}):
        note("scratch: not reviewed, skipped: %s/%s" % (folder, f))
    for f in sorted(photos - present):
        note("scratch: missing: %s/%s" % (folder, f))
    for f in sorted(photos & present):
        path = os.path.join(d, f)
        sc_items.append(Item(path, "scratch-%s-%s" % (folder.lower(), os.path.splitext(f)[0]),
                             "scratch-" + folder.lower(), sc_pkg, sc_licence, sc_author,
                             "%s/%s/%s" % (SCRATCH_BG, folder, f), sc_source))

ski_items = []
fetchers = " ".join(open(os.path.join(ski_root, "skimage/data/_fetchers.py"), encoding="utf-8").read().split())
for f, label, author, licence, phrase, upstream in SKIMAGE:
    if phrase not in fetchers:
        raise SystemExit("skimage/data/_fetchers.py no longer says %r (%s)" % (phrase, f))
    ski_items.append(Item(os.path.join(ski_root, "skimage/data", f), "skimage-" + os.path.splitext(f)[0],
                          label, ski_pkg, licence, author, "skimage/data/" + f, upstream))


def dedupe(items, set_name):
    """Drop copies: same decoded pixels, or the same upstream photo (keep the largest)."""
    keep, by_cid, by_url = [], {}, {}
    for it in sorted(items, key=lambda it: (-it.pixels, it.original)):
        other = by_cid.get(it.cid) or (by_url.get(it.photo_url) if it.photo_url else None)
        if other:
            note("%s: %s is a copy of %s, dropped" % (set_name, it.original, other.original))
            continue
        by_cid[it.cid] = it
        if it.photo_url:
            by_url[it.photo_url] = it
        keep.append(it)
    return keep


classes = dedupe(gc_items + sc_items, "classes")
near_dup = dedupe([it for it in gc_items if max(it.im.size) >= NEAR_DUP_MIN_SIDE] + ski_items,
                  "near-dup-bases")

# --- write images ---------------------------------------------------------------------
rows, written, unchanged = [], 0, 0
entries = []  # (path, item) for splits


def emit(rel, data, row):
    global written, unchanged
    path = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if write_if_changed(path, data):
        written += 1
    else:
        unchanged += 1
    rows.append([rel] + row[:5] + [hashlib.sha256(data).hexdigest()] + row[5:])


converted = {}
for set_name, items in (("classes", classes), ("near-dup-bases", near_dup)):
    for it in items:
        if it.src not in converted:
            converted[it.src] = output_bytes(it.raw, it.im, it.original)
        data, ext = converted[it.src]
        rel = ("classes/%s/%s%s" % (it.label, it.name, ext) if set_name == "classes"
               else "near-dup-bases/%s%s" % (it.name, ext))
        emit(rel, data, [set_name, it.label, it.package, it.licence, it.author, it.original, it.upstream])
        entries.append((rel, it))

# --- Fashion-MNIST ---------------------------------------------------------------------
manifest_path = os.path.join(out_dir, "manifest.tsv")
fm_rebuilt = bool(fm_root)
if fm_root:
    import numpy as np

    def read_idx(path):
        with gzip.open(path, "rb") as f:
            data = f.read()
        magic, = struct.unpack(">I", data[:4])
        if magic >> 8 != 0x08:
            raise SystemExit("%s: not an unsigned-byte IDX file" % path)
        ndim = magic & 0xFF
        dims = struct.unpack(">%dI" % ndim, data[4:4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)

    fm_licence, fm_author, _ = dep5_stanza(
        os.path.join(fm_root, "usr/share/doc/dataset-fashion-mnist/copyright"), "x")
    if fm_licence == "Expat":
        fm_licence = "MIT (Expat)"
    seen, dups, conflicts, idx = {}, 0, 0, 0
    for part, n in (("train", 60000), ("t10k", 10000)):
        images = read_idx(os.path.join(fm_root, FM_DIR, "%s-images-idx3-ubyte.gz" % part))
        labels = read_idx(os.path.join(fm_root, FM_DIR, "%s-labels-idx1-ubyte.gz" % part))
        if images.shape != (n, 28, 28) or labels.shape != (n,):
            raise SystemExit("unexpected Fashion-MNIST %s shape %s" % (part, images.shape))
        for i in range(n):
            px = images[i].tobytes()
            label = FM_CLASSES[labels[i]]
            first = seen.get(px)
            if first is not None:
                dups += 1
                conflicts += first[1] != label
                idx += 1
                continue
            seen[px] = (idx, label)
            buf = io.BytesIO()
            Image.frombytes("L", (28, 28), px).save(buf, "PNG")
            emit("fashion-mnist/%s/%05d.png" % (label, idx), buf.getvalue(),
                 ["fashion-mnist", label, fm_pkg, fm_licence, fm_author,
                  "%s/%s-images-idx3-ubyte.gz[%d]" % (FM_DIR, part, i), FM_UPSTREAM])
            idx += 1
    note("Fashion-MNIST: %d images, %d exact duplicates dropped (%d with another label)"
         % (idx, dups, conflicts))
elif os.path.exists(manifest_path):
    # Keep an earlier --with-fashion-mnist result as it is.
    with open(manifest_path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        old = [dict(zip(header, l.rstrip("\n").split("\t"))) for l in f]
    kept = [[r.get(c, "") for c in COLUMNS] for r in old
            if r.get("set") == "fashion-mnist" and os.path.exists(os.path.join(out_dir, r["path"]))]
    rows += kept
    if kept:
        note("fashion-mnist/: kept %d files from an earlier run (no --with-fashion-mnist)" % len(kept))

# --- remove what an earlier run wrote and this one did not -------------------------------
wanted = {r[0] for r in rows}
for top in ["classes", "near-dup-bases"] + (["fashion-mnist"] if fm_rebuilt else []):
    for dirpath, dirs, files in os.walk(os.path.join(out_dir, top), topdown=False):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), out_dir)
            if rel not in wanted:
                os.remove(os.path.join(dirpath, f))
                note("removed stale %s" % rel)
        if not os.listdir(dirpath):
            os.rmdir(dirpath)

# --- splits: groups of copies of one photo get one split --------------------------------
parent = {}


def find(x):
    while parent.setdefault(x, x) != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def union(a, b):
    a, b = find(a), find(b)
    if a != b:
        parent[max(a, b)] = min(a, b)


by_url, uniq = {}, {}
for rel, it in entries:
    uniq[it.cid] = it
    find(it.cid)
    if it.photo_url:
        union(it.cid, by_url.setdefault(it.photo_url, it.cid))
close = []
its = sorted(uniq.values(), key=lambda it: it.cid)
for i, a in enumerate(its):
    for b in its[i + 1:]:
        d = bin(a.dh ^ b.dh).count("1")
        if d <= DHASH_SAME and find(a.cid) != find(b.cid):
            close.append((d, a.original, b.original))
            union(a.cid, b.cid)
for d, a, b in close:
    note("dHash %d: %s ~ %s: same split" % (d, a, b))


def split_of(group):
    return "val" if int(hashlib.sha256(("lookalike-split:" + group).encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT else "train"


splits = sorted((rel, split_of(find(it.cid)), find(it.cid)[:16]) for rel, it in entries)

# --- manifest, splits, README --------------------------------------------------------------
order = {"classes": 0, "near-dup-bases": 1, "fashion-mnist": 2}
rows.sort(key=lambda r: (order[r[1]], r[0]))
tsv = lambda rs: "".join("\t".join(clean(x) for x in r) + "\n" for r in rs).encode("utf-8")
write_if_changed(manifest_path, tsv([COLUMNS] + rows))
write_if_changed(os.path.join(out_dir, "splits.tsv"), tsv([["path", "split", "group"]] + splits))

count = collections.Counter((r[1], r[2]) for r in rows)
per_set = collections.Counter(r[1] for r in rows)
split_count = collections.Counter((rel.split("/")[0], s) for rel, s, g in splits)
licences = collections.Counter((r[1], r[4]) for r in rows)

md = ["# lookalike data sets", "",
      "Generated by `scripts/fetch-datasets.sh`; do not edit. Per-file provenance",
      "(package, original path, author, licence, upstream URL, SHA-256) is in",
      "`manifest.tsv`; the train/val assignment of `classes/` and `near-dup-bases/`",
      "is in `splits.tsv` (copies of one photo share a group and a split).", "",
      "| set | files | train | val |", "|---|---|---|---|"]
for s in ("classes", "near-dup-bases", "fashion-mnist"):
    if per_set[s]:
        md.append("| %s | %d | %s | %s |" % (s, per_set[s], split_count.get((s, "train"), "-"),
                                             split_count.get((s, "val"), "-")))
md += ["", "Classes: " + ", ".join("%s (%d)" % (l, n) for (s, l), n in sorted(count.items()) if s == "classes"), "",
       "Licences:", ""]
md += ["- %s: %s: %d files" % (s, l, n) for (s, l), n in sorted(licences.items())]
md += ["",
       "The Scratch backgrounds are Copyright (c) 2011 Massachusetts Institute of",
       "Technology, licensed CC-BY-SA-3.0 (Debian `scratch` copyright file): give",
       "attribution and share alike when redistributing them or derived images.",
       "Fashion-MNIST is Copyright 2017 Zalando SE, MIT licence. GCompris and",
       "scikit-image photos are CC0 or public domain as stated by their packages.", ""]
write_if_changed(os.path.join(out_dir, "README.md"), "\n".join(md).encode("utf-8"))

print("files: %d written, %d unchanged" % (written, unchanged), file=sys.stderr)
for s in ("classes", "near-dup-bases", "fashion-mnist"):
    if per_set[s]:
        print("%-15s %6d  %s" % (s, per_set[s], "(train %d, val %d)" % (
            split_count[(s, "train")], split_count[(s, "val")]) if s != "fashion-mnist" else
            "(idx < 60000: upstream train, else test)"), file=sys.stderr)
        print("    " + ", ".join("%s %d" % (l, n) for (ss, l), n in sorted(count.items()) if ss == s),
              file=sys.stderr)
PYEOF
log "done in $((SECONDS - START)) s"
