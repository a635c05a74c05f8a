# Dockerfile: builds rotor on Debian 12; the image holds rotor, its libraries and a non-root user.

# ---- build: the same Debian 12 packages as scripts/setup.sh (cmocka because the build also
# compiles the tests; nothing of it reaches the runtime image).
FROM debian:12-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      librdkafka-dev libuv1-dev libjansson-dev libpq-dev libcurl4-openssl-dev libyaml-dev libssl-dev \
      libmicrohttpd-dev libcmocka-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build

# ---- runtime: the shared libraries rotor links and CA certificates for TLS (Kafka over SASL_SSL,
# Event Hubs, Key Vault); no compiler, no shell tools beyond the base image.
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librdkafka1 libuv1 libjansson4 libpq5 libssl3 libcurl4 libyaml-0-2 libmicrohttpd12 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so Kubernetes' runAsNonRoot can verify it and volumes can be owned by it.
RUN groupadd --system --gid 10001 rotor \
 && useradd --system --uid 10001 --gid rotor --home-dir /var/lib/rotor \
      --shell /usr/sbin/nologin rotor \
 && mkdir -p /etc/rotor /var/lib/rotor/secrets \
 && chown -R rotor:rotor /var/lib/rotor \
 && chmod 0700 /var/lib/rotor/secrets
COPY --from=build /src/build/rotor /usr/local/bin/rotor
USER 10001:10001
WORKDIR /var/lib/rotor
# /healthz, /readyz and /metrics (http.listen must bind 0.0.0.0:9464 in the mounted config).
EXPOSE 9464
ENTRYPOINT ["rotor"]
CMD ["run", "-c", "/etc/rotor/rotor.yaml"]
