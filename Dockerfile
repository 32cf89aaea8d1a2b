# tollgate: a multi-stage image. The build stage runs cmake/build.sh, the
# same script CI runs (test/run-all.sh), so the image's build is proven on
# every CI run even though no Docker engine runs there. The runtime stage
# is Debian bookworm-slim with only the packages the binary's libraries
# come from (share/tollgate/runtime-packages, written by the build), the
# tokenizer data and the price catalog, run as a non-root user.
#
#   docker build -t tollgate .
#   docker run -p 8080:8080 tollgate                        embedded default (mock, DB-less)
#   docker run -p 8080:8080 -v $PWD/tollgate.yaml:/etc/tollgate.yaml tollgate --config /etc/tollgate.yaml
#
# examples/compose.yaml runs PostgreSQL, two instances behind nginx and
# Prometheus.

FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN bash cmake/build.sh --prefix /opt/tollgate \
 && rm -rf build-release

FROM debian:bookworm-slim
COPY --from=build /opt/tollgate /opt/tollgate
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive xargs -a /opt/tollgate/share/tollgate/runtime-packages \
      apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tollgate --create-home tollgate
USER tollgate
WORKDIR /var/lib/tollgate
ENV TOLLGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
# ready: listening, the key cache loaded (with a database), not draining
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health/ready || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/tollgate/bin/tollgate"]
