#!/usr/bin/env bash
# Install Apptainer under PREFIX on Debian 12, with test images, and print the environment to use it.
#
#   eval "$(ci/apptainer-install.sh /tmp/tf-apptainer)"
#
# Debian 12 has no apptainer package and no container registry is reachable, so:
#   1. Debian 12 packages: squashfs-tools (mksquashfs, to build SIF files), squashfuse (to run them without
#      privileges), busybox-static (the test image), python3-pyelftools (the patcher);
#   2. Debian unstable's apptainer .deb, fetched with a private apt configuration (the system's sources are
#      never changed) from the mirror this machine already uses, unpacked with dpkg-deb -x;
#   3. its binaries import __isoc23_strtol/__isoc23_strtoul (glibc 2.38), which Debian 12's glibc 2.36 lacks:
#      ci/patch_isoc23.py retargets them to strtol/strtoul@GLIBC_2.2.5;
#   4. relocated under PREFIX (apptainer finds its starter, configuration and session directory next to itself);
#   5. ci/apptainer-image.sh builds a sandbox directory and a SIF file from busybox and the host's bash.
#
# Idempotent: a second run checks and prints. Progress goes to stderr; stdout ends with `export` lines:
# PATH, APPTAINER_USERNS=1 when root (root without user namespaces needs capabilities this VM does not
# grant), TASKFARMER_TEST_SANDBOX and TASKFARMER_TEST_SIF (the test images).
# Environment: APPTAINER_DEB_VERSION (preferred .deb version, default the one known to work),
# APPTAINER_DEBIAN_MIRROR (default: the Debian mirror of /etc/apt/sources*).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KNOWN_GOOD=${APPTAINER_DEB_VERSION:-1.4.5-2}
PACKAGES=(squashfs-tools squashfuse busybox-static python3-pyelftools)

log() { printf 'apptainer-install: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 PREFIX"
PREFIX=$(realpath -m -- "$1")
STARTED=$(date +%s.%N)

missing_packages() {
    local package
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' || echo "$package"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "missing Debian packages ${missing[*]}: install them as root (apt-get install ${missing[*]})"
    log "installing ${missing[*]}"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
        "${apt[@]}" update >&2
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

# The Debian archive this machine uses (not the security archive, not a third-party repository).
debian_mirror() {
    if [[ -n ${APPTAINER_DEBIAN_MIRROR:-} ]]; then echo "$APPTAINER_DEBIAN_MIRROR"; return; fi
    local found
    found=$({
        sed -n 's/^[[:space:]]*URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
    } | grep -E '^[a-z+]+://[^[:space:]]+/debian/?$' | head -n 1 || true)
    echo "${found:-http://deb.debian.org/debian}"
}

# Fetch the apptainer .deb of Debian unstable into $1 with apt configuration, lists and cache all under $1.
download_deb() {
    local dir=$1 mirror
    mirror=$(debian_mirror)
    mkdir -p "$dir/sources.list.d" "$dir/preferences.d" "$dir/state/lists/partial" "$dir/cache/archives/partial"
    : >"$dir/state/status"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror%/} unstable main" >"$dir/sources.list"
    local apt=(-o "Dir::Etc::sourcelist=$dir/sources.list" -o "Dir::Etc::sourceparts=$dir/sources.list.d"
        -o "Dir::Etc::preferencesparts=$dir/preferences.d" -o "Dir::State=$dir/state"
        -o "Dir::State::status=$dir/state/status" -o "Dir::Cache=$dir/cache" -o Acquire::Languages=none
        -o APT::Sandbox::User=root -o "APT::Architecture=$(dpkg --print-architecture)")
    log "fetching the apptainer package list of ${mirror%/} unstable"
    apt-get "${apt[@]}" -qq update >&2 || die "apt-get update of ${mirror%/} unstable failed (see above)"
    local version=$KNOWN_GOOD
    if ! apt-cache "${apt[@]}" madison apptainer | awk '{print $3}' | grep -qxF "$KNOWN_GOOD"; then
        version=$(apt-cache "${apt[@]}" policy apptainer | sed -n 's/^[[:space:]]*Candidate:[[:space:]]*//p')
        [[ -n $version && $version != "(none)" ]] || die "no apptainer package in ${mirror%/} unstable"
        log "apptainer $KNOWN_GOOD is gone from unstable: trying $version (the patch may not be enough for it)"
    fi
    (cd "$dir" && apt-get "${apt[@]}" -qq download "apptainer=$version" >&2) || die "cannot download apptainer $version"
    ls "$dir"/apptainer_*.deb
}

# Unpack, patch and relocate the package into PREFIX.
WORK=
cleanup() { if [[ -n $WORK ]]; then rm -rf -- "$WORK"; fi; }
trap cleanup EXIT

install_apptainer() {
    local work deb
    WORK=$(mktemp -d "${PREFIX%/}.tmp.XXXXXX")
    work=$WORK
    deb=$(download_deb "$work/apt")
    dpkg-deb -x "$deb" "$work/root"
    local starter libexec
    starter=$(find "$work/root/usr/lib" -path '*/apptainer/bin/starter' -type f | head -n 1)
    [[ -x $work/root/usr/bin/apptainer && -n $starter ]] || die "unexpected layout in $deb"
    libexec=${starter%/bin/starter}
    /usr/bin/python3 "$HERE/patch_isoc23.py" "$work/root/usr/bin/apptainer" "$starter" \
        "$libexec/lib/offsetpreload.so" || die "patching the binaries failed (see above)"
    mkdir -p "$PREFIX"
    cp -a "$work/root/usr/." "$PREFIX/"
    cp -a "$work/root/etc/." "$PREFIX/etc/"
    ln -sfn apptainer "$PREFIX/bin/singularity"  # as upstream's own packages do
}

# The session directory apptainer computes once relocated (buildcfg's SESSIONDIR and the one the runtime
# resolves differ: create both).
make_state_dirs() {
    local session
    session=$("$PREFIX/bin/apptainer" buildcfg | sed -n 's/^SESSIONDIR=//p')
    mkdir -p "${session:-$PREFIX/var/lib/apptainer/mnt/session}" "$PREFIX/lib/var/lib/apptainer/mnt/session"
}

works() { "$PREFIX/bin/apptainer" --version >/dev/null 2>&1; }

main() {
    install_packages
    mkdir -p "$PREFIX"
    exec 9>"$PREFIX/.install.lock"
    flock 9  # two CI steps installing at once would unpack over each other
    if works; then
        log "apptainer already installed in $PREFIX"
    else
        install_apptainer
    fi
    make_state_dirs
    local version
    version=$("$PREFIX/bin/apptainer" --version 2>&1) || die "$PREFIX/bin/apptainer --version fails: $version"
    log "$version in $PREFIX"
    if [[ $(id -u) -eq 0 ]]; then export APPTAINER_USERNS=1; fi
    PATH=$PREFIX/bin:$PATH "$HERE/apptainer-image.sh" "$PREFIX/images" >&2
    log "done in $(awk -v a="$STARTED" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
    # shellcheck disable=SC2016  # $PATH is for the caller's eval to expand
    printf 'export PATH=%q:"$PATH"\n' "$PREFIX/bin"
    if [[ $(id -u) -eq 0 ]]; then echo 'export APPTAINER_USERNS=1'; fi
    printf 'export TASKFARMER_TEST_SANDBOX=%q\n' "$PREFIX/images/sandbox"
    printf 'export TASKFARMER_TEST_SIF=%q\n' "$PREFIX/images/test.sif"
}

main
