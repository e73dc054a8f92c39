#!/bin/sh
# Install headless Chromium for tests/report.rs (Debian/Ubuntu). Prints why when it cannot.
set -e
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "cannot install chromium: not root and no password-less sudo"; exit 1; fi
fi
if ! command -v apt-get >/dev/null 2>&1; then echo "cannot install chromium: no apt-get"; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "apt-get finished but no chromium on PATH"; exit 1; }
