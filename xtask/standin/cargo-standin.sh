#!/bin/sh
# `cargo build --release … -p NAME` in the Rust stand-in image: copies the host's build of NAME
# to target/release/NAME, where the Dockerfiles take it from. Anything else is refused.
set -eu
package=""
while [ $# -gt 0 ]; do
  case "$1" in
    -p) package="$2"; shift 2 ;;
    *) shift ;;
  esac
done
[ -n "$package" ] || { echo "cargo (stand-in): only 'cargo build -p NAME' is served" >&2; exit 2; }
[ -x "/opt/portcullis-host-build/$package" ] || { echo "cargo (stand-in): no host build of $package" >&2; exit 2; }
mkdir -p target/release
cp "/opt/portcullis-host-build/$package" "target/release/$package"
echo "cargo (stand-in): target/release/$package from the host's build"
