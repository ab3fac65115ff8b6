# pyhasses in a container: Debian 12's python3 and the Debian packages of its
# dependencies, pyhasses itself installed from this tree, run in the
# foreground as the unprivileged user "pyhasses" (uid 10001), logging to
# stdout.  Options come from PYHASSES_* variables and from the command line
# (README.rst, section "Container"; pyhasses/container.py reads them).
#
#   podman build --format docker -t pyhasses .
#   podman run --rm -p 8080:8080 pyhasses
#
# --format docker keeps the HEALTHCHECK (the OCI image format has none);
# docker build keeps it anyway.

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-setuptools python3-wheel \
        python3-httptools python3-cryptography python3-daemon python3-jwt python3-hiredis \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.cfg setup.py README.rst LICENSE /src/
COPY src /src/src
# A venv that sees Debian's packages: pip installs pyhasses alone into it
# (no dependency comes from the network) and nothing into /usr.
RUN python3 -m venv --system-site-packages --without-pip /opt/pyhasses \
 && /opt/pyhasses/bin/python3 -m pip install --no-deps --no-build-isolation --no-index \
        --disable-pip-version-check --no-compile -q /src \
 && /opt/pyhasses/bin/python3 -m compileall -q /opt/pyhasses/lib

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
        python3-httptools python3-cryptography python3-daemon python3-jwt python3-hiredis \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 pyhasses \
 && useradd --no-log-init --uid 10001 --gid pyhasses --home-dir /run/pyhasses --no-create-home \
        --shell /usr/sbin/nologin pyhasses \
 && install -d -o pyhasses -g pyhasses -m 0750 /run/pyhasses
COPY --from=build /opt/pyhasses /opt/pyhasses

# The PYHASSES_* variables' defaults live in pyhasses/container.py.
ENV PATH=/opt/pyhasses/bin:$PATH \
    PYTHONUNBUFFERED=1
USER pyhasses
WORKDIR /run/pyhasses
# 8080: the event streams (and POST /publish with --publisher-key).  8085:
# the control port, on the container's network only with a secret.
EXPOSE 8080 8085
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python3", "-m", "pyhasses.container", "--healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "pyhasses.container"]
