# Stages:
#   dev      Go toolchain plus the project's tools (task, air) already built;
#            compose.yaml and the devcontainer run the service from the
#            mounted source under Air.
#   build    a static binary of ./src (CGO off, -trimpath, stripped), with
#            module and build caches kept between builds.
#   runtime  that binary alone on scratch, as a non-root user. The default
#            target: `go tool task build` or `docker build -t service .`.
#
# No `# syntax=` line: the Dockerfile frontend built into BuildKit (Docker
# 20.10 and later) has every feature used here, and a syntax line would make
# each build fetch a frontend image from a registry.
#
# Behind a proxy that re-signs TLS with its own CA, module downloads fail
# with "x509: certificate signed by unknown authority". Pass the host's CA
# bundle as a build secret and the downloads trust it (the images do not
# keep it):
#   docker build --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt .

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS dev
ARG USERNAME=dev
ARG USER_UID=1000
ARG USER_GID=${USER_UID}
# psql and pg_dump for `task manage:pending` and for looking around.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid "${USER_GID}" "${USERNAME}" \
 && useradd --uid "${USER_UID}" --gid "${USER_GID}" --create-home --shell /bin/bash "${USERNAME}" \
 && mkdir -p "/home/${USERNAME}/.cache/go-build" /workspace \
 && chown -R "${USERNAME}:${USERNAME}" "/home/${USERNAME}/.cache" /workspace
USER ${USERNAME}
WORKDIR /workspace
# Only go.mod, go.sum and the Task launcher with its own modfile
# (src/internal/tools/task): the source is mounted at run time. The tools go
# to /go/bin (on PATH as `task` and `air`) and into the build cache, so
# `go tool task` and `go tool air` start at once.
COPY --chown=${USERNAME}:${USERNAME} go.mod go.sum ./
COPY --chown=${USERNAME}:${USERNAME} src/internal/tools/task ./src/internal/tools/task
RUN --mount=type=secret,id=ca-certificates,mode=0444 \
    if [ -s /run/secrets/ca-certificates ]; then export SSL_CERT_FILE=/run/secrets/ca-certificates; fi \
 && go mod download \
 && go install tool \
 && go tool task --version \
 && go tool air -v
ENV MODE=development
CMD ["go", "tool", "air"]

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
COPY src ./src
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export SSL_CERT_FILE=/run/secrets/ca-certificates; fi \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/service ./src

FROM scratch AS runtime
# CA certificates, for brokers or databases reached over TLS.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/service /service
# 65532: the conventional "nonroot" user of minimal images; scratch has no
# /etc/passwd, so it is given by number.
USER 65532:65532
ENV MODE=production
# /metrics, /healthz and /readyz.
ENV METRICS_ADDR=:9464
EXPOSE 9464
# Exits 0 when the service is ready (its /readyz: consuming on every route,
# database reachable), else 1 with why not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/service", "healthcheck"]
ENTRYPOINT ["/service"]
