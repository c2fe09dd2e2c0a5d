#!/usr/bin/env bash
# Install a ViWorkS service from this repository on a systemd host (run as root).
#
#   etc/install-service.sh backend|gateway [--prefix /opt/viworks] [--root DIR]
#
# Creates a virtualenv under PREFIX and installs the package into it with the versions
# pinned in constraints.txt (the set the tests ran on), copies the example configuration to
# /etc/viworks if none is there yet, gives the backend's user its private keys, installs the
# systemd unit and starts it. The shipped units run PREFIX=/opt/viworks; another prefix
# rewrites ExecStart accordingly. Running it again upgrades the package and keeps the
# configuration; run it again after copying the keys into /etc/viworks/pki.
#
# --root DIR installs into DIR as if it were / (an image or a chroot being prepared, or a
# test): every file goes under DIR, the virtualenv is built in DIR/PREFIX with its scripts
# pointing at PREFIX, the viworks user is created in DIR's account files (useradd --root),
# and the unit is enabled with systemctl --root. Nothing is started.
set -euo pipefail
# The new virtualenv must see only its own packages: another environment's on PYTHONPATH
# would make pip skip the dependencies ("already satisfied") and leave the venv broken.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

usage() {
    echo "usage: $0 backend|gateway [--prefix /opt/viworks] [--root DIR]" >&2
    exit 2
}

say() { echo "install-service: $*"; }
die() { echo "install-service: error: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
role=$1
shift
prefix=/opt/viworks
root=/
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

case $role in
    backend) unit=viworks-backend.service; config=backend.toml ;;
    gateway) unit=viworks-gateway-agent.service; config=agent.toml ;;
    *) usage ;;
esac

[ "$(id -u)" -eq 0 ] || die "must run as root"
command -v systemctl >/dev/null || die "systemctl not found: this script needs systemd"
command -v python3 >/dev/null || die "python3 not found"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python >= 3.11 is required (found $(python3 -V 2>&1))"

repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
[ -f "$repo/pyproject.toml" ] || die "cannot find the viworks repository at $repo"
[ -f "$repo/constraints.txt" ] || die "$repo/constraints.txt is missing (make constraints)"
prefix=$(readlink -m "$prefix")
root=$(readlink -m "$root")
[ -d "$root" ] || die "--root $root is not a directory"
# $dest is prepended to every path written ("" for the running system).
dest=${root%/}
venv=$dest$prefix/venv

if [ "$role" = backend ]; then
    if [ -z "$dest" ]; then
        id -u viworks >/dev/null 2>&1 || {
            say "creating system user viworks"
            useradd --system --home-dir /var/lib/viworks --no-create-home \
                --shell /usr/sbin/nologin --user-group viworks
        }
        owner="$(id -u viworks):$(id -g viworks)"
    else
        [ -f "$dest/etc/passwd" ] || die "$dest/etc/passwd not found: --root needs the image's account files"
        grep -q '^viworks:' "$dest/etc/passwd" || {
            say "creating system user viworks in $dest"
            useradd --root "$dest" --system --home-dir /var/lib/viworks --no-create-home \
                --shell /usr/sbin/nologin --user-group viworks
        }
        owner=$(awk -F: '$1 == "viworks" { print $3 ":" $4 }' "$dest/etc/passwd")
    fi
fi
if [ "$role" = gateway ] && ! command -v htpasswd >/dev/null; then
    say "note: htpasswd not found; install apache2-utils for the panel verbs"
fi

if ! python3 -m venv --help >/dev/null 2>&1; then
    die "python3 -m venv is unavailable (Debian/Ubuntu: apt-get install python3-venv)"
fi
say "creating virtualenv $venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q -c "$repo/constraints.txt" --upgrade pip
say "installing viworks from $repo (versions pinned by constraints.txt)"
"$venv/bin/python" -m pip install -q -c "$repo/constraints.txt" "$repo"
# Build twistd's plugin cache now (the service user may not be able to write it later).
"$venv/bin/python" -c \
    "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
if [ -n "$dest" ]; then
    # The scripts' #! lines name the interpreter by where it was built: make them name
    # where it will run (the rest of a venv finds its files relative to bin/python).
    # (Lines 1-2: pip writes a /bin/sh trampoline on line 2 when the path is long.)
    for script in "$venv"/bin/*; do
        [ -f "$script" ] && [ ! -L "$script" ] || continue
        sed -i "1,2s|$venv/bin/|$prefix/venv/bin/|" "$script"
    done
fi

install -d -m 0755 "$dest/etc/viworks"
if [ -e "$dest/etc/viworks/$config" ]; then
    say "keeping existing $dest/etc/viworks/$config"
else
    say "installing example $dest/etc/viworks/$config (edit it before relying on the service)"
    install -m 0644 "$repo/etc/$config" "$dest/etc/viworks/$config"
fi
install -d -m 0755 "$dest/etc/viworks/pki"
if [ "$role" = backend ]; then
    install -d -m 0700 -o "${owner%:*}" -g "${owner#*:}" "$dest/var/lib/viworks"
    # The backend runs as viworks and must read its TLS key and its command-signing key:
    # those named by the configuration ([tls] key, [signing] key) are given to it, 0600.
    keys=$("$venv/bin/python" - "$dest" "$dest/etc/viworks/$config" <<'PY'
import os, sys, tomllib

dest, path = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    data = tomllib.load(f)
for section in ("tls", "signing"):
    key = data.get(section, {}).get("key")
    if isinstance(key, str) and key:
        # Relative paths are relative to the configuration file, as the backend reads them.
        print(dest + key if os.path.isabs(key) else os.path.join(os.path.dirname(path), key))
PY
)
    while IFS= read -r key; do
        [ -n "$key" ] || continue
        if [ -e "$key" ]; then
            chown "$owner" "$key"
            chmod 0600 "$key"
            say "$key: owned by viworks, mode 0600"
        else
            say "note: $key is not there yet; copy it, then run this script again"
        fi
    done <<<"$keys"
else
    install -d -m 0700 "$dest/var/lib/viworks/agent"
fi

say "installing $dest/etc/systemd/system/$unit"
install -d -m 0755 "$dest/etc/systemd/system"
sed "s#/opt/viworks/venv/#$prefix/venv/#g" "$repo/etc/systemd/$unit" \
    > "$dest/etc/systemd/system/$unit"
chmod 0644 "$dest/etc/systemd/system/$unit"
if [ -n "$dest" ]; then
    systemctl --root="$dest" enable "$unit"
    say "done: $unit installed and enabled in $dest (not started)"
    exit 0
fi
systemctl daemon-reload
say "enabling and starting $unit"
if ! systemctl enable --now "$unit"; then
    die "$unit failed to start; see: journalctl -u $unit"
fi
say "done. Status: systemctl status $unit; logs: journalctl -u $unit -f"
say "TLS files expected under /etc/viworks/pki (see /etc/viworks/$config)"
