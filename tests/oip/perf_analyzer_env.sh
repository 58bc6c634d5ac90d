#!/bin/sh
# Make DIR/bin/perf_analyzer: Triton's perf_analyzer from PyPI (the pins in tests/oip/perf_analyzer.txt),
# runnable on this machine. `make perf-analyzer` runs it; the perf_analyzer tests in tests/oip use it.
#
#   perf_analyzer_env.sh DIR PYTHON UV
#
# PyPI's perf-analyzer 2.60.0 is one C++ binary in a manylinux_2_38 wheel: it needs glibc >= 2.38
# (__isoc23_strtol and kin) and the C++ runtime of GCC 13 or later (GLIBCXX_3.4.32). Ubuntu 24.04 and
# Debian 13 have both and run it as it is. Debian 12 (glibc 2.36, GCC 12's libstdc++) does not: there
# it runs under Debian 13's libc6, libstdc++6 and libgcc-s1, fetched with apt-get from Debian's archive
# (signed lists, like any apt package), unpacked into DIR/runtime and used through that glibc's own
# loader; nothing is installed system-wide. The wrapper DIR/bin/perf_analyzer runs the binary either way.
set -eu
DIR=$1 PYTHON=$2 UV=$3
HERE=$(cd "$(dirname "$0")" && pwd)

test -x "$DIR/bin/python" || "$UV" venv -q --python "$PYTHON" "$DIR"
# The wheel is tagged for glibc 2.38: install it as for that platform (it has no dependencies).
"$UV" pip install -q --python "$DIR/bin/python" --python-platform x86_64-manylinux_2_38 --no-deps \
    -r "$HERE/perf_analyzer.txt"
BINARY=$("$DIR/bin/python" -c "import perf_analyzer, pathlib; \
print(pathlib.Path(perf_analyzer.__file__).parent / 'bin' / 'perf_analyzer')")
chmod +x "$BINARY"

RUNTIME=$DIR/runtime
LOADER=
if ! "$BINARY" --version >/dev/null 2>&1; then
  if [ ! -x "$RUNTIME/lib/ld-linux-x86-64.so.2" ]; then
    echo "perf_analyzer needs a newer C/C++ runtime than this system's:" >&2
    "$BINARY" --version 2>&1 | grep -o "version \`[A-Z_.0-9]*' not found" | sort -u >&2 || true
    echo "fetching Debian 13's libc6, libstdc++6 and libgcc-s1 into $RUNTIME" >&2
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
      echo "error: apt-get and dpkg-deb are needed to fetch them; or run on Ubuntu 24.04 / Debian 13" >&2
      exit 1; }
    APT=$(mktemp -d)
    mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/debs" "$RUNTIME/lib"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        > "$APT/sources.list"
    set -- -q -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT" -o Dir::Cache::archives="$APT/archives" \
        -o APT::Sandbox::User=root
    apt-get "$@" update >/dev/null
    (cd "$APT/debs" && apt-get "$@" download libc6 libstdc++6 libgcc-s1 >/dev/null)
    UNPACKED=$APT/unpacked
    for deb in "$APT"/debs/*.deb; do dpkg-deb -x "$deb" "$UNPACKED"; done
    cp -a "$UNPACKED"/usr/lib/x86_64-linux-gnu/. "$RUNTIME/lib/"
    rm -rf "$APT"
  fi
  LOADER=$RUNTIME/lib/ld-linux-x86-64.so.2
  LIBS=$RUNTIME/lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
fi

rm -f "$DIR/bin/perf_analyzer"  # the wheel's entry point, replaced by the wrapper
if [ -n "$LOADER" ]; then
  printf '#!/bin/sh\nexec "%s" --library-path "%s" "%s" "$@"\n' "$LOADER" "$LIBS" "$BINARY" > "$DIR/bin/perf_analyzer"
else
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$BINARY" > "$DIR/bin/perf_analyzer"
fi
chmod +x "$DIR/bin/perf_analyzer"
"$DIR/bin/perf_analyzer" --version
