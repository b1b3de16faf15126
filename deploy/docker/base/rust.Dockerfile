# Stand-in for the upstream rust:<version>-slim-<release> image, made by ../prepare.sh: the
# toolchain of the machine that runs it (rustc, cargo, std) on the local Debian image, with
# gcc for linking and for crates that build C, laid out like upstream (CARGO_HOME).
ARG BASE
FROM ${BASE}
# the machine's CA bundle (never committed): cargo fetches crates over HTTPS
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && rustc --version && cargo --version
