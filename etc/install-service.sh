#!/usr/bin/env bash
# Install a ViWorkS service from this repository on a systemd host (run as root).
#
#   etc/install-service.sh backend|gateway [--prefix /opt/viworks]
#
# Creates a virtualenv under PREFIX, installs the package into it, copies the example
# configuration to /etc/viworks if none is there yet, installs the systemd unit and starts it.
# The shipped units run PREFIX=/opt/viworks; another prefix rewrites ExecStart accordingly.
set -euo pipefail

usage() {
    echo "usage: $0 backend|gateway [--prefix /opt/viworks]" >&2
    exit 2
}

say() { echo "install-service: $*"; }
die() { echo "install-service: error: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
role=$1
shift
prefix=/opt/viworks
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
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
[ -f "$repo/setup.py" ] || die "cannot find the viworks repository at $repo"
prefix=$(readlink -m "$prefix")

if [ "$role" = backend ] && ! id -u viworks >/dev/null 2>&1; then
    say "creating system user viworks"
    useradd --system --home-dir /var/lib/viworks --no-create-home \
        --shell /usr/sbin/nologin --user-group viworks
fi
if [ "$role" = gateway ] && ! command -v htpasswd >/dev/null; then
    say "note: htpasswd not found; install apache2-utils for the panel verbs"
fi

if ! python3 -m venv --help >/dev/null 2>&1; then
    die "python3 -m venv is unavailable (Debian/Ubuntu: apt-get install python3-venv)"
fi
say "creating virtualenv $prefix/venv"
mkdir -p "$prefix"
python3 -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q --upgrade pip
say "installing viworks from $repo"
"$prefix/venv/bin/python" -m pip install -q "$repo"
# Build twistd's plugin cache now (the service user may not be able to write it later).
"$prefix/venv/bin/python" -c \
    "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

install -d -m 0755 /etc/viworks
if [ -e "/etc/viworks/$config" ]; then
    say "keeping existing /etc/viworks/$config"
else
    say "installing example /etc/viworks/$config (edit it before relying on the service)"
    install -m 0644 "$repo/etc/$config" "/etc/viworks/$config"
fi
install -d -m 0755 /etc/viworks/pki
if [ "$role" = backend ]; then
    install -d -m 0700 -o viworks -g viworks /var/lib/viworks
else
    install -d -m 0700 /var/lib/viworks/agent
fi

say "installing /etc/systemd/system/$unit"
sed "s#/opt/viworks/venv/#$prefix/venv/#g" "$repo/etc/systemd/$unit" \
    > "/etc/systemd/system/$unit"
chmod 0644 "/etc/systemd/system/$unit"
systemctl daemon-reload
say "enabling and starting $unit"
if ! systemctl enable --now "$unit"; then
    die "$unit failed to start; see: journalctl -u $unit"
fi
say "done. Status: systemctl status $unit; logs: journalctl -u $unit -f"
say "TLS files expected under /etc/viworks/pki (see /etc/viworks/$config)"
