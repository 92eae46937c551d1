#!/usr/bin/env bash
# The browser test drives a system Chromium through Playwright (never `playwright install`, which
# downloads a browser). Install Debian's package when it is missing and we may (root or sudo);
# otherwise say so: the browser tests then skip with this reason.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get here; install Chromium yourself (the browser tests skip without it)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install-chromium: not root and no sudo; run 'apt-get install chromium' (the browser tests skip without it)" >&2
    exit 0
  fi
fi
echo "install-chromium: apt-get install chromium (for the browser tests)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
  || echo "install-chromium: apt-get install chromium failed; the browser tests will skip" >&2
exit 0
