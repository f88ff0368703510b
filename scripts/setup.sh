#!/usr/bin/env bash
# Install what pkifed and its tests need on a Debian or Ubuntu machine: the
# SoftHSM2 package and a virtual environment in .venv with pkifed and the extras
# in PKIFED_EXTRAS (default: test). For the tests it also installs Chromium,
# which renders the HTML report. For the dev and test extras it installs
# Azurite, the Azure Storage emulator that pkifed dev up and the azure-blob
# tests run, into .cache/azurite. The dev extra also installs Node.js and npm
# when they are missing; the tests skip Azurite without them. Safe to run
# again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
extras=${PKIFED_EXTRAS:-test}

need_packages=()
command -v softhsm2-util >/dev/null 2>&1 || need_packages+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
if [ "$extras" = test ]; then
  command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
fi
if [ "$extras" = dev ]; then
  # NOTE: Azurite 3.37.0 declares Node.js 22 or later in its package.json. It
  # ran with Node.js 20.20 here, but Debian 12's own nodejs (18.20) is untested.
  command -v node >/dev/null 2>&1 || need_packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || need_packages+=(npm)
fi
if [ "${#need_packages[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing Debian packages: ${need_packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_packages[@]}" >/dev/null
  else
    echo "setup: please install ${need_packages[*]} with your package manager" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the virtual environment .venv"
  "$python" -m venv .venv
fi
if [ ! -f ".venv/.installed-$extras" ] || [ pyproject.toml -nt ".venv/.installed-$extras" ]; then
  echo "setup: installing pkifed[$extras] into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  touch ".venv/.installed-$extras"
fi

# Azurite, the Azure Storage emulator, for pkifed dev and the azure-blob
# target's tests. The version matches AZURITE_VERSION in
# pkifed/providers/localservices/azurite.py.
azurite_version=3.37.0
if { [ "$extras" = test ] || [ "$extras" = dev ]; } && command -v npm >/dev/null 2>&1 && [ ! -f ".cache/azurite/.installed-$azurite_version" ]; then
  echo "setup: installing azurite $azurite_version into .cache/azurite"
  npm install --prefix .cache/azurite --no-audit --no-fund --silent "azurite@$azurite_version"
  touch ".cache/azurite/.installed-$azurite_version"
fi
