#!/usr/bin/env bash
# Create or update the MQTT login of one kiosk and print its new password once.
#
#   add-kiosk-user.sh STORE KIOSK [PASSWORD_FILE]
#
# The username is "STORE/KIOSK": the ACL pattern `o2o/v1/%u/#` then confines the
# kiosk to o2o/v1/STORE/KIOSK/#. The password is random, written hashed to
# PASSWORD_FILE (default /etc/mosquitto/o2o/passwd) and printed once on stdout, for
# the kiosk's config; it is not stored or logged anywhere else.
#
# If a file named `acl` sits beside PASSWORD_FILE (or ACL_FILE is set), the kiosk's
# Home Assistant discovery topic is granted there too (idempotent).
# Reload the broker afterwards (SIGHUP / `systemctl reload mosquitto`).
set -euo pipefail

usage() { echo "usage: $0 STORE KIOSK [PASSWORD_FILE]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage

store=$1
kiosk=$2
passwd_file=${3:-/etc/mosquitto/o2o/passwd}
acl_file=${ACL_FILE:-$(dirname -- "$passwd_file")/acl}

# Ids are single topic levels: no '/', '+', '#', ':' or spaces may reach the ACL.
id_re='^[A-Za-z0-9_-]{1,64}$'
for id in "$store" "$kiosk"; do
    if [[ ! $id =~ $id_re ]]; then
        echo "error: id '$id' must match $id_re" >&2
        exit 2
    fi
done
# Reserved: `bridge`, `dashboard`, `homeassistant` are service usernames (the ACL
# pattern would give them that store's subtree); kiosk `bridge` is the shop bridge's
# state topic (bridge-to-central.conf.template).
case $store in bridge | dashboard | homeassistant) reserved="store id '$store'" ;; *) reserved= ;; esac
[[ $kiosk == bridge ]] && reserved="kiosk id 'bridge'"
if [[ -n $reserved ]]; then
    echo "error: $reserved is reserved" >&2
    exit 2
fi

command -v mosquitto_passwd >/dev/null || {
    echo "error: mosquitto_passwd not found (apt-get install mosquitto)" >&2
    exit 1
}

user="$store/$kiosk"
# 24 random bytes -> 32 URL-safe characters; no shell or URL quoting needed.
password=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')

umask 077 # a new password file is readable by its owner only
[[ -e $passwd_file ]] || : >"$passwd_file"
# -b takes the password as an argument: it is visible in /proc for the few
# milliseconds mosquitto_passwd runs, on this machine only. Its output is dropped so
# nothing about the password lands in a log.
if ! mosquitto_passwd -b "$passwd_file" "$user" "$password" >/dev/null 2>&1; then
    echo "error: mosquitto_passwd could not update $passwd_file" >&2
    exit 1
fi

if [[ -f $acl_file ]]; then
    topic="homeassistant/device/o2o_${store}_${kiosk}/config"
    if ! grep -qxF "topic write $topic" "$acl_file"; then
        printf '\nuser %s\ntopic write %s\n' "$user" "$topic" >>"$acl_file"
    fi
else
    echo "note: no ACL file at $acl_file; grant homeassistant/device/o2o_${store}_${kiosk}/config by hand" >&2
fi

echo "$password"
