#!/usr/bin/env bash
# Run pkifed across four key stores and four publish targets on one fresh
# Debian or Ubuntu machine, with no cloud account. The script installs what is
# missing and creates a SoftHSM2 token for the root CA. It starts local
# stand-ins of AWS, Google Cloud and Azure with pkifed dev up, then validates,
# plans and applies examples/multicloud.yaml. Last, it verifies every issuing CA
# with openssl, checks that the trust bundle is the same on every target, and
# writes the report. Running it again changes nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PKIFED_EXTRAS=dev bash scripts/setup.sh

example="$root/examples"
state="$example/.pkifed"
mkdir -p "$state/softhsm/tokens"
chmod 700 "$state"
export SOFTHSM2_CONF="$state/softhsm/softhsm2.conf"
if [ ! -f "$SOFTHSM2_CONF" ]; then
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
    "$state/softhsm/tokens" >"$SOFTHSM2_CONF"
fi

# The token's PIN is random and kept in a file readable by this user only,
# which the example refers to as ${file:...}. The security officer PIN is
# never needed again, so it is not kept.
umask 077
[ -s "$state/multicloud-hsm-pin" ] || .venv/bin/python -c \
  'import secrets; print(secrets.token_urlsafe(18))' >"$state/multicloud-hsm-pin"
if ! softhsm2-util --show-slots 2>/dev/null | grep -q 'Label:.*pkifed-multicloud'; then
  echo "multicloud: creating the SoftHSM2 token pkifed-multicloud"
  .venv/bin/python examples/softhsm_token.py pkifed-multicloud "$state/multicloud-hsm-pin"
fi
umask 022

pkifed=".venv/bin/pkifed"
config="examples/multicloud.yaml"
out="examples/out/multicloud"
report="examples/out/multicloud-report.html"
echo "== pkifed dev up (local AWS, Google Cloud and Azure on 127.0.0.1)"
$pkifed dev up -c "$config"
echo "== pkifed validate"
$pkifed validate -c "$config"
echo "== pkifed plan"
$pkifed plan -c "$config"
echo "== pkifed apply"
$pkifed apply -c "$config"
echo "== openssl verify (each issuing CA against the published trust bundle)"
for cloud in aws gcp azure; do
  openssl verify -x509_strict -CAfile "$out/trust.pem" "$out/issuing-$cloud.pem"
done
echo "== the trust bundle, read back from each target through its own SDK"
.venv/bin/python examples/multicloud_readback.py "$config" trust.pem
echo "== pkifed plan --detailed-exitcode (0: every target matches, nothing to do)"
$pkifed plan -c "$config" --detailed-exitcode
echo "== pkifed report"
$pkifed report -c "$config"
$pkifed report -c "$config" --format html -o "$report"
echo
echo "HTML report: $root/$report"
echo "Published files: $root/$out"
echo "The local services keep running. Stop them, which discards their keys:"
echo "  .venv/bin/pkifed dev down -c $config"
