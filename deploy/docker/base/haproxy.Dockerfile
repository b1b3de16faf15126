# Stand-in for the upstream haproxy image, made by ../prepare.sh from Debian's haproxy. Like
# upstream: runs as `haproxy`, reads /usr/local/etc/haproxy/haproxy.cfg, master-worker mode in
# the foreground, and SIGUSR1 (soft stop) as the stop signal.
ARG BASE
FROM ${BASE}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /usr/local/etc/haproxy /var/lib/haproxy \
    && chown haproxy:haproxy /var/lib/haproxy
USER haproxy
WORKDIR /var/lib/haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
