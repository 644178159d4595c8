#!/usr/bin/env bash
# Install the Debian packages radnode's tests run as real peers, if missing:
#   dcmtk (storescu/echoscu/findscu: the modality), orthanc + orthanc-dicomweb (the PACS),
#   orthanc-python (runs viewer_plugin/ inside Orthanc), dicom3tools (dciodvfy: validates the
#   SRs radnode writes), docker-compose (parses docker-compose.yml without an engine),
#   chromium + chromium-driver (the viewer's browser tests, driven by Selenium), postgresql
#   (initdb/pg_ctl: tests/pgserver.py starts a throw-away server for the scale-out tests),
#   rsyslog + rsyslog-gnutls (the syslog-over-TLS peer of the audit trail tests), prometheus
#   (promtool: checks and unit-tests the alerting rules of k8s/monitoring/).
set -euo pipefail
packages=(dcmtk orthanc orthanc-dicomweb orthanc-python dicom3tools docker-compose chromium chromium-driver
          postgresql rsyslog rsyslog-gnutls prometheus)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Debian keeps PostgreSQL's server tools out of PATH (/usr/lib/postgresql/<major>/bin);
# tests/pgserver.py runs initdb and pg_ctl: link the newest major's into /usr/local/bin.
link_postgres_tools() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bin" ] || return 0
  for tool in initdb pg_ctl; do
    command -v "$tool" >/dev/null || $SUDO ln -s "$bin/$tool" "/usr/local/bin/$tool"
  done
}

if [ ${#missing[@]} -eq 0 ]; then
  link_postgres_tools
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
# Do not let the packages' init scripts start system-wide daemons (tests start their own).
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
link_postgres_tools
