#!/usr/bin/env bash
# Run pkifed's main job on examples/quickstart.yaml on a fresh machine: install
# what is missing, create a SoftHSM2 token and the secret files the example
# refers to, then validate, apply, verify with openssl, plan again and report.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PKIFED_EXTRAS=pkcs11 bash scripts/setup.sh

example="$root/examples"
state="$example/.pkifed"
mkdir -p "$state/softhsm/tokens"
chmod 700 "$state"
export SOFTHSM2_CONF="$state/softhsm/softhsm2.conf"
if [ ! -f "$SOFTHSM2_CONF" ]; then
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
    "$state/softhsm/tokens" >"$SOFTHSM2_CONF"
fi

# Demo secrets: random, kept in files readable by this user only, and referred
# to by the example as ${file:...}, never written into the configuration.
umask 077
for secret in hsm-pin keystore-passphrase; do
  [ -s "$state/$secret" ] || .venv/bin/python -c \
    'import secrets; print(secrets.token_urlsafe(18))' >"$state/$secret"
done
if ! softhsm2-util --show-slots 2>/dev/null | grep -q 'Label:.*pkifed-quickstart'; then
  echo "quickstart: creating the SoftHSM2 token pkifed-quickstart"
  .venv/bin/python examples/softhsm_token.py pkifed-quickstart "$state/hsm-pin"
fi
umask 022

pkifed=".venv/bin/pkifed"
config="examples/quickstart.yaml"
echo "== pkifed validate"
$pkifed validate -c "$config"
echo "== pkifed plan"
$pkifed plan -c "$config"
echo "== pkifed apply"
$pkifed apply -c "$config"
echo "== openssl verify (issuing CA against the published trust bundle)"
openssl verify -x509_strict -CAfile examples/out/trust.pem examples/out/issuing.pem
echo "== pkifed plan --detailed-exitcode (0: nothing left to do)"
$pkifed plan -c "$config" --detailed-exitcode
echo "== pkifed report"
$pkifed report -c "$config"
echo
echo "Published files are in examples/out; state is in examples/.pkifed."
