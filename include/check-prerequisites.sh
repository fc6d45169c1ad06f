#!/usr/bin/env bash
# Fail early, naming what is missing, when the machine lacks Python 3.11+ or Java 17/21.
set -u
python=${1:-python3}

if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup: Python 3.11 or newer is required, but '$python' is not on PATH (set PYTHON=/path/to/python3.11)." >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup: Python 3.11 or newer is required, but '$python' is $("$python" --version 2>/dev/null || echo 'not runnable') (set PYTHON=/path/to/python3.11)." >&2
  exit 1
fi
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "setup: '$python' cannot create virtual environments: install its venv module (Debian: python3-venv)." >&2
  exit 1
fi

java=java
[ -n "${JAVA_HOME:-}" ] && java="$JAVA_HOME/bin/java"
if ! command -v "$java" >/dev/null 2>&1; then
  echo "setup: Java 17 or 21 is required by Spark, but no 'java' was found (install openjdk-17-jre-headless or set JAVA_HOME)." >&2
  exit 1
fi
version=$("$java" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
case "$major" in
  17|21) ;;
  *)
    echo "setup: Java 17 or 21 is required by Spark, but '$java' is version ${version:-unknown} (set JAVA_HOME to a JDK 17 or 21)." >&2
    exit 1
    ;;
esac
