#!/bin/bash
# testbed: build the cw image with podman on a machine that reaches no image
# registry (tests/container uses it too).
#
#   sudo docker/testbed.sh setup          # podman's config for runc (once)
#   sudo docker/testbed.sh base           # the base image, from debootstrap (once, ~1 min)
#   sudo docker/testbed.sh build [TAG]    # the cw image from docker/Dockerfile [cw:latest]
#   sudo docker/testbed.sh clean [TAG]    # remove both images
#
# Needs root and Debian's podman, runc and debootstrap. The base image is
# Debian bookworm (minbase, python3 3.11) turned into an image with
# `podman import`; it is made once and kept. pip wheels cw's dependencies on
# this machine's Python 3.11 (CW_TESTBED_PYTHON), and the build itself runs
# with no network (PIP_NO_INDEX=1).
# Then e.g.: podman run --rm --net=host -e CW_INSECURE=1 cw:latest
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${CW_TESTBED_BASE:-localhost/cw-testbed-base:bookworm}
CONF=/etc/containers/containers.conf
MARK="# cw-testbed"

setup() {
    for tool in podman runc; do
        command -v "$tool" >/dev/null || { echo "testbed: no $tool; apt-get install podman runc debootstrap" >&2; exit 1; }
    done
    # Podman sets default rlimits the kernel refuses here, and its default
    # runtime (crun) is not installed: say runc, and no default ulimits.
    if [ -e "$CONF" ] && ! grep -q "$MARK" "$CONF"; then
        echo "testbed: $CONF exists and is not ours; leaving it as it is" >&2
        return 0
    fi
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' "$MARK" > "$CONF"
}

base() {
    setup
    if podman image exists "$BASE"; then
        echo "testbed: $BASE exists"
        return 0
    fi
    command -v debootstrap >/dev/null || { echo "testbed: no debootstrap; apt-get install debootstrap" >&2; exit 1; }
    local dir
    dir=$(mktemp -d /var/tmp/cw-rootfs.XXXXXX)
    trap 'rm -rf "$dir"' RETURN
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$dir" >"$dir.log" 2>&1 \
        || { echo "testbed: debootstrap failed; see $dir.log" >&2; exit 1; }
    rm -f "$dir.log"
    tar -C "$dir" -c . | podman import - "$BASE" >/dev/null
    echo "testbed: made $BASE"
}

build() {
    local tag=${1:-cw:latest} ctx
    base
    ctx=$(mktemp -d /var/tmp/cw-context.XXXXXX)
    trap 'rm -rf "$ctx"' RETURN
    # Only what the image needs, so a build sees the same files from a
    # work tree as from a fresh clone.
    cp -r "$ROOT"/cw "$ROOT"/docker "$ROOT"/setup.cfg "$ROOT"/pyproject.toml "$ROOT"/README.md "$ctx"/
    find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$ctx/docker/wheels"
    # The dependencies' wheels, and what building cw's own wheel needs, for
    # the base's Python (bookworm: 3.11), which must be this one's too.
    local py=${CW_TESTBED_PYTHON:-python3}
    if [ "$("$py" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" != True ]; then
        echo "testbed: $py is not Python 3.11 like the base image; set CW_TESTBED_PYTHON" >&2
        exit 1
    fi
    "$py" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$ctx/docker/wheels" \
        "$ctx" "setuptools>=61" wheel
    rm -f "$ctx"/docker/wheels/cw-*.whl
    rm -rf "$ctx/build" "$ctx"/*.egg-info
    local old new
    old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    podman build --quiet --pull=never --network=none --layers=false \
        --build-arg "BASE=$BASE" --build-arg PIP_NO_INDEX=1 \
        -f "$ctx/docker/Dockerfile" -t "$tag" "$ctx" >/dev/null
    new=$(podman image inspect --format '{{.Id}}' "$tag")
    # The image the tag named before would linger untagged; containers still using it keep it.
    if [ -n "$old" ] && [ "$old" != "$new" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
    echo "testbed: built $tag"
}

clean() {
    podman rmi -f "${1:-cw:latest}" "$BASE" >/dev/null 2>&1 || true
    echo "testbed: removed ${1:-cw:latest} and $BASE"
}

case "${1:-}" in
    setup) setup ;;
    base) base ;;
    build) build "${2:-}" ;;
    clean) clean "${2:-}" ;;
    *) echo "usage: $0 setup|base|build [TAG]|clean [TAG]" >&2; exit 2 ;;
esac
