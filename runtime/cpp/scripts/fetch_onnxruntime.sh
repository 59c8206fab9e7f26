#!/usr/bin/env bash
# Prepare everything the C++ runtime needs to build on Debian, and print ONNXRUNTIME_ROOT.
#
#   runtime/cpp/scripts/fetch_onnxruntime.sh [PYTHON]
#
# 1. Build tools and libraries from Debian (cmake, a C++ compiler, pkg-config, libpng-dev,
#    libtiff-dev, nlohmann-json3-dev): used when present; installed with apt-get when missing and
#    running as root; otherwise the script stops and names the packages to install.
# 2. ONNX Runtime, assembled in the usual release layout (include/, lib/) under
#    runtime/cpp/third_party/onnxruntime:
#    - where the system's apt sources carry libonnxruntime-dev (Debian 13 and later), that
#      package is installed (as root) and linked into the layout;
#    - otherwise (Debian 12) the headers come from Debian 13's libonnxruntime-dev, fetched with a
#      private trixie sources list (nothing system-wide changes: apt-get download + dpkg -x), and
#      the library is the one the onnxruntime pip wheel ships in PYTHON's environment
#      (onnxruntime/capi/libonnxruntime.so.1.*). ONNX Runtime's C API is versioned and backward
#      compatible, so the 1.21 headers run against the wheel's newer library.
# The last line of stdout is the ONNXRUNTIME_ROOT to pass to cmake. Re-running is cheap: a
# finished layout is reused while the library it was made from is unchanged.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cpp_root="$(dirname "$here")"
third_party="$cpp_root/third_party"
ort_root="$third_party/onnxruntime"
apt_dir="$third_party/apt"
mirror="${MRDL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
python="${1:-${PYTHON:-$cpp_root/../../.venv/bin/python}}"

say() { echo "fetch_onnxruntime: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
    || die "this script needs a Debian-based system (apt-get, dpkg); elsewhere install cmake, a C++17 compiler, libpng, libtiff (>= 4.5), nlohmann-json and ONNX Runtime yourself and pass -DONNXRUNTIME_ROOT=... to cmake"

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed (is a Debian mirror reachable?)"
        apt_updated=1
    fi
}

# --- 1. Debian build dependencies -------------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
have_pkg libpng-dev || [ -f /usr/include/png.h ] || missing+=(libpng-dev)
have_pkg libtiff-dev || [ -f /usr/include/tiffio.h ] || [ -f "/usr/include/$(uname -m)-linux-gnu/tiffio.h" ] || missing+=(libtiff-dev)
[ -f /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json3-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    if is_root; then
        apt_update_once
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    else
        die "missing build dependencies: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    fi
fi

# --- 2. ONNX Runtime -----------------------------------------------------------------------------
stamp="$ort_root/.assembled-from"

system_ort_available() {
    have_pkg libonnxruntime-dev && return 0
    apt-cache policy libonnxruntime-dev 2>/dev/null | grep -q "Candidate: [0-9]"
}

link_system_ort() {
    if ! have_pkg libonnxruntime-dev; then
        is_root || die "libonnxruntime-dev is available from your apt sources; install it with: sudo apt-get install libonnxruntime-dev"
        say "installing libonnxruntime-dev"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libonnxruntime-dev >&2 \
            || die "apt-get install libonnxruntime-dev failed"
    fi
    local lib
    lib="$(dpkg -L libonnxruntime-dev | grep -E '/libonnxruntime\.so$' | head -n1)"
    [ -n "$lib" ] || die "libonnxruntime-dev is installed but ships no libonnxruntime.so"
    rm -rf "$ort_root"
    mkdir -p "$ort_root/lib"
    ln -s /usr/include/onnxruntime "$ort_root/include"
    ln -s "$(readlink -f "$lib")" "$ort_root/lib/libonnxruntime.so"
    echo "system:$(readlink -f "$lib")" > "$stamp"
}

wheel_library() {
    [ -x "$python" ] || die "no Python at $python; create the venv first (make install) or pass its python as the first argument"
    local capi
    capi="$("$python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null)" \
        || die "$python cannot import onnxruntime; install it (pip install onnxruntime) into that environment"
    local lib
    lib="$(ls "$capi"/libonnxruntime.so.1.* 2>/dev/null | head -n1)"
    [ -n "$lib" ] || die "no libonnxruntime.so.1.* in $capi (the onnxruntime wheel ships it there)"
    echo "$lib"
}

assemble_from_trixie_and_wheel() {
    local lib="$1"
    apt_update_trixie
    local tmp
    tmp="$(mktemp -d "$third_party/.ort.XXXXXX")"
    say "downloading Debian 13 libonnxruntime-dev (headers only)"
    (cd "$tmp" && apt-get "${trixie_opts[@]}" download libonnxruntime-dev >&2) \
        || die "apt-get download libonnxruntime-dev from trixie failed"
    dpkg -x "$tmp"/libonnxruntime-dev_*.deb "$tmp/deb"
    [ -f "$tmp/deb/usr/include/onnxruntime/onnxruntime_cxx_api.h" ] \
        || die "the downloaded libonnxruntime-dev has no usr/include/onnxruntime/onnxruntime_cxx_api.h"
    mkdir -p "$tmp/root/lib"
    mv "$tmp/deb/usr/include/onnxruntime" "$tmp/root/include"
    local name
    name="$(basename "$lib")"
    cp "$lib" "$tmp/root/lib/$name"
    local shared
    shared="$(dirname "$lib")/libonnxruntime_providers_shared.so"
    [ -f "$shared" ] && cp "$shared" "$tmp/root/lib/"
    ln -s "$name" "$tmp/root/lib/libonnxruntime.so.1"
    ln -s "libonnxruntime.so.1" "$tmp/root/lib/libonnxruntime.so"
    echo "wheel:$lib:$(stat -c %s "$lib")" > "$tmp/root/.assembled-from"
    rm -rf "$ort_root"
    mv "$tmp/root" "$ort_root"
    rm -rf "$tmp"
}

trixie_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "APT::Sandbox::User=$(id -un)"
)
apt_update_trixie() {
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || die "$keyring is missing (package debian-archive-keyring)"
    echo "deb [signed-by=$keyring] $mirror trixie main" > "$apt_dir/sources.list"
    say "apt-get update (private trixie list in $apt_dir)"
    apt-get "${trixie_opts[@]}" update -qq >&2 || die "apt-get update of the private trixie list failed (is $mirror reachable?)"
}

mkdir -p "$third_party"
if [ -n "${ONNXRUNTIME_ROOT:-}" ]; then
    [ -f "$ONNXRUNTIME_ROOT/include/onnxruntime_cxx_api.h" ] \
        || die "ONNXRUNTIME_ROOT=$ONNXRUNTIME_ROOT has no include/onnxruntime_cxx_api.h"
    say "using ONNXRUNTIME_ROOT from the environment"
    echo "$ONNXRUNTIME_ROOT"
    exit 0
fi
reuse=0
if [ -f "$stamp" ]; then
    case "$(cat "$stamp")" in
        system:*) reuse=1 ;;
        wheel:*) lib="$(wheel_library)"; [ "$(cat "$stamp")" = "wheel:$lib:$(stat -c %s "$lib")" ] && reuse=1 ;;
    esac
fi
if [ "$reuse" -eq 1 ]; then
    say "reusing $ort_root"
else
    is_root && apt_update_once  # so that apt-cache knows whether this release packages ONNX Runtime
    if system_ort_available; then
        link_system_ort
    else
        assemble_from_trixie_and_wheel "$(wheel_library)"
    fi
fi
say "ONNX Runtime ready in $ort_root"
echo "$ort_root"
