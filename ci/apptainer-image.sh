#!/usr/bin/env bash
# Build the Apptainer test images in DIR without any registry: DIR/sandbox (a directory image) and DIR/test.sif.
#
#   ci/apptainer-image.sh DIR        (apptainer on PATH; mksquashfs from squashfs-tools for the SIF)
#
# The image is busybox-static with its applets in /bin, plus the host's bash and the libraries it links to, so
# that runners can use both /bin/sh and /bin/bash; /etc/passwd and /etc/group know root and nobody.
# Idempotent: existing images are kept (delete DIR to rebuild).
set -euo pipefail

log() { printf 'apptainer-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 DIR"
DIR=$(realpath -m -- "$1")
BUSYBOX=${BUSYBOX:-/bin/busybox}

make_rootfs() {
    local root=$1 applet lib
    mkdir -p "$root"/{bin,etc,tmp,var/tmp,root,home,proc,sys,dev,usr/bin,opt}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
    done
    ln -sf /bin/env "$root/usr/bin/env"
    rm -f "$root/bin/bash"
    cp /bin/bash "$root/bin/bash"
    for lib in $(ldd /bin/bash | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    : >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
    echo 'pytaskfarmer apptainer test image' >"$root/etc/taskfarmer-test-image"
}

main() {
    command -v apptainer >/dev/null || die "apptainer is not on PATH"
    [[ -x $BUSYBOX ]] || die "$BUSYBOX not found (apt-get install busybox-static)"
    mkdir -p "$DIR"
    if [[ ! -e $DIR/sandbox/etc/taskfarmer-test-image ]]; then
        log "building $DIR/sandbox"
        rm -rf "$DIR/sandbox.tmp" "$DIR/sandbox"
        make_rootfs "$DIR/sandbox.tmp"
        mv "$DIR/sandbox.tmp" "$DIR/sandbox"
    fi
    if [[ ! -s $DIR/test.sif ]]; then
        command -v mksquashfs >/dev/null || die "mksquashfs not found (apt-get install squashfs-tools)"
        log "building $DIR/test.sif"
        apptainer build --force "$DIR/test.sif.tmp" "$DIR/sandbox" >&2
        mv "$DIR/test.sif.tmp" "$DIR/test.sif"
    fi
    local answer
    answer=$(apptainer exec "$DIR/test.sif" /bin/bash -c 'cat /etc/taskfarmer-test-image' 2>&1) ||
        die "the SIF image does not run: $answer"
    log "images ready in $DIR"
}

main
