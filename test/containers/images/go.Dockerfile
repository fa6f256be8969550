# A stand-in for the official golang image, made where no image registry is
# reachable: Debian bookworm (the base the harness imports from
# mmdebstrap), the tools the official image has (git, curl, gcc for cgo and
# -race, make), and the host's own Go toolchain, which is the build context.
# Only the container tests use it; users get the official image.
FROM debian:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git gcc libc6-dev make pkg-config openssh-client procps \
 && rm -rf /var/lib/apt/lists/*
COPY . /usr/local/go
ENV GOPATH=/go \
    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    GOTOOLCHAIN=local
# As in the official image: a GOPATH every user may write to.
RUN mkdir -p /go/src /go/bin && chmod -R 1777 /go \
 && go version
WORKDIR /go
