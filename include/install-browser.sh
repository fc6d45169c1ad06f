#!/usr/bin/env bash
# The browser test (tests/test_airflow.py) drives Debian's chromium with its chromedriver. Install them
# when they are missing and this machine can (apt-get as root, or sudo without a password); otherwise
# say so: the browser test is then skipped, unless LAKEHOUSE_REQUIRE_BROWSER is set (CI sets it).
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
packages="chromium chromium-driver"
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="none"; fi
  fi
  if [ "$sudo" != none ]; then
    echo "browser: installing $packages from the Debian archive for the browser test"
    if $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages >/tmp/lakehouse-apt.log 2>&1 \
      || { $sudo apt-get update -q >/dev/null 2>&1 \
           && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages >/tmp/lakehouse-apt.log 2>&1; }; then
      exit 0
    fi
    echo "browser: apt-get could not install $packages (log: /tmp/lakehouse-apt.log)" >&2
  fi
fi
echo "browser: chromium and chromedriver are not installed and cannot be installed here (Debian: apt-get install $packages);" \
     "the browser test will be skipped" >&2
exit 0
