#!/usr/bin/env bash
# Make a private CA and a server certificate for the broker's TLS listener (mqtts://).
#
#   make-certs.sh DIR [HOSTNAME]
#
# Writes DIR/ca.crt, DIR/ca.key, DIR/server.crt, DIR/server.key. Clients trust
# ca.crt (kiosk config / paho tls_set(ca_certs=...)). HOSTNAME (default: this
# machine's name) goes into the certificate's subjectAltName along with localhost
# and 127.0.0.1. Existing files in DIR are replaced. Keep ca.key offline.
set -euo pipefail

[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 DIR [HOSTNAME]" >&2; exit 2; }
dir=$1
host=${2:-$(hostname -f 2>/dev/null || hostname)}
days_ca=3650
days_server=825 # the longest validity clients such as Apple's accept

command -v openssl >/dev/null || { echo "error: openssl not found" >&2; exit 1; }
mkdir -p -- "$dir"
umask 077 # private keys readable by the owner only

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

# CA: a self-signed EC key/certificate allowed to sign certificates only.
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -days "$days_ca" \
    -subj "/O=O2O kiosk/CN=O2O kiosk broker CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>"$work/log" ||
    { cat "$work/log" >&2; exit 1; }

# Server key + CSR, then signed by the CA with the names clients will dial.
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/server.key" -out "$work/server.csr" -subj "/O=O2O kiosk/CN=$host" \
    2>"$work/log" || { cat "$work/log" >&2; exit 1; }

cat >"$work/ext.cnf" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$host,DNS:localhost,IP:127.0.0.1
EXT
openssl x509 -req -in "$work/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -CAserial "$work/ca.srl" -out "$dir/server.crt" \
    -days "$days_server" -extfile "$work/ext.cnf" 2>"$work/log" ||
    { cat "$work/log" >&2; exit 1; }

# Certificates are public; the broker (user mosquitto) must read server.key:
# chgrp mosquitto DIR/server.key && chmod 640 DIR/server.key when installing.
chmod 644 "$dir/ca.crt" "$dir/server.crt"
echo "wrote $dir/ca.crt $dir/server.crt $dir/server.key (CA key: $dir/ca.key) for $host"
