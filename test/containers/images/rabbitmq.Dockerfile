# A stand-in for the official rabbitmq management image, made where no image
# registry is reachable: Debian's rabbitmq-server (3.10, which ships the
# management and prometheus plugins). Like the official image it reads
# /etc/rabbitmq (compose.yaml mounts rabbitmq-configs/ there), logs to
# stdout and has rabbitmq-diagnostics on PATH for the health check. Only the
# container tests use it; users get the official image (4.x).
FROM debian:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/rabbitmq/*
ENV RABBITMQ_LOGS=- \
    HOME=/var/lib/rabbitmq
EXPOSE 4369 5672 15672 15692 25672
# As the rabbitmq user, the server the VM's own script (PID 1: it stops
# cleanly on docker stop's SIGTERM; Debian's /usr/sbin wrapper would keep
# su in between, which does not pass SIGTERM on, and log to a file). The CLI
# tools (rabbitmq-diagnostics for the health check, rabbitmqctl) run as the
# same user and share its Erlang cookie.
USER rabbitmq
WORKDIR /var/lib/rabbitmq
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
