#!/usr/bin/env bash
# Make Debian's chromium available for the browser tests (tests/browser.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Installs it with apt-get
# only when running as root; otherwise says why and leaves the browser tests to skip.
# Never downloads a browser build of its own (no `playwright install`).
set -u
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    echo "ensure-chromium: $CHROMIUM is present"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure-chromium: $CHROMIUM is missing and this is not root: browser tests will skip (as root: apt-get install chromium)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: $CHROMIUM is missing and there is no apt-get: browser tests will skip"
    exit 0
fi
echo "ensure-chromium: installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
if apt-get update -q && apt-get install -y -q --no-install-recommends chromium; then
    echo "ensure-chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
else
    echo "ensure-chromium: apt-get could not install chromium: browser tests will skip"
fi
exit 0
