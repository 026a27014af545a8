# Stand-in for rust:1.95-bookworm where Docker Hub cannot be reached and no Rust toolchain can be
# downloaded: Debian plus the binaries `cargo xtask compose-test` built on the host (the same
# Debian release, so the same libc), and a `cargo` that hands them over instead of compiling.
# Only the build stage of origin/Dockerfile and edge/ratelimit/Dockerfile uses it; the images
# that run are built from the runtime base as for users.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY bin/ /opt/portcullis-host-build/
COPY cargo-standin.sh /usr/local/bin/cargo
