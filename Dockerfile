# syntax=docker/dockerfile:1
#
# The pkifed controller with every provider and target: PKCS#11, AWS KMS, Google
# Cloud KMS, Azure Key Vault, S3, Cloud Storage, Azure Blob and PostgreSQL.
#
#   docker build -t pkifed:0.1.0 .
#   docker run --rm -v "$PWD/federation.yaml:/etc/pkifed/federation.yaml:ro" \
#     -p 9469:9469 pkifed:0.1.0
#
# The image contains no configuration and no secrets. Mount the federation file
# at /etc/pkifed/federation.yaml and pass secrets as environment variables or
# mounted files that the file refers to with ${env:NAME} or ${file:PATH}.
# Cloud credentials come from each SDK's default chain, such as workload
# identity.
#
# PKCS#11 modules are vendor libraries, so the image ships none. To use an HSM,
# build a derived image that adds the vendor's client library, for example:
#
#   FROM pkifed:0.1.0
#   USER root
#   COPY libvendor-pkcs11.so /usr/local/lib/pkcs11/
#   USER 10001:10001
#
# and set the provider's `module:` to /usr/local/lib/pkcs11/libvendor-pkcs11.so.
# For SoftHSM2, install the Debian package instead:
# `apt-get install --no-install-recommends softhsm2`.

# The build stage installs pkifed and its dependencies into a virtual
# environment, which the runtime stage copies without the build's sources.
FROM python:3.12-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/pkifed

WORKDIR /src
# pyproject.toml names README.md as the package's long description, so the
# build backend needs it too.
COPY pyproject.toml README.md ./
COPY pkifed ./pkifed
# Every dependency, psycopg2-binary and python-pkcs11 included, ships wheels for
# CPython 3.12 on x86_64 and aarch64 glibc Linux, so the stage needs no compiler.
RUN /opt/pkifed/bin/pip install ".[all]"


FROM python:3.12-slim-bookworm

# A fixed numeric UID and GID, so Kubernetes can check runAsNonRoot and volume
# ownership (fsGroup) can match them.
RUN groupadd --system --gid 10001 pkifed \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pkifed

COPY --from=build /opt/pkifed /opt/pkifed

# The installed files belong to root and stay read-only for the pkifed user.
# Bytecode was compiled at install time, so nothing needs to write beside it.
ENV PATH=/opt/pkifed/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001

# /healthz, /readyz and /metrics. The daemon listens on 127.0.0.1:9469 unless
# the federation file sets daemon.listen, so a container needs
# `daemon: {listen: "0.0.0.0:9469"}` there (or `--listen 0.0.0.0:9469`) for
# the port to be reachable from outside it.
EXPOSE 9469

# Kubernetes ignores HEALTHCHECK and uses the pod's probes instead. This check
# works for Docker and Compose when the daemon listens on port 9469.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9469/healthz', timeout=4)"]

ENTRYPOINT ["pkifed"]
CMD ["daemon", "-c", "/etc/pkifed/federation.yaml"]
