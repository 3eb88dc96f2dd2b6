# fleet-mcp-proxy over streamable HTTP, installed the way the README installs it (a venv + pip install).
#   docker build -t fleet-mcp-proxy .
#   docker run --rm -p 8000:8000 fleet-mcp-proxy                 # the demo tracker at http://localhost:8000/mcp
#   docker run --rm -p 8000:8000 -e FLEET_API_KEY -e FLEET_MCP_PROXY_TOKEN \
#     -v "$PWD/proxy.toml:/etc/fleet-mcp-proxy/config.toml:ro" -v fmp-data:/data fleet-mcp-proxy
# The default config (docker/config.toml) binds 0.0.0.0:8000 and allows the Host values localhost:8000 and
# 127.0.0.1:8000; a mounted config lists the names clients really use under [proxy] allowed_hosts.
# BASE_IMAGE: any image with Python 3.11 and its venv module (e.g. a mirror's copy of python:3.11-slim).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    XDG_STATE_HOME=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fleet_mcp_proxy ./fleet_mcp_proxy
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && rm -rf /app

COPY docker/config.toml /etc/fleet-mcp-proxy/config.toml
# The episode record lives in /data ($XDG_STATE_HOME): mount a volume there to keep it.
# Not "proxy": Debian's base-passwd (so python:3.11-slim too) already has a system user by that name.
RUN useradd --create-home --uid 10001 mcpproxy && mkdir -p /data && chown mcpproxy:mcpproxy /data
VOLUME /data
USER mcpproxy
WORKDIR /home/mcpproxy

EXPOSE 8000
# /healthz needs no token and no curl: the image's own Python asks it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["fleet-mcp-proxy"]
CMD ["serve", "--config", "/etc/fleet-mcp-proxy/config.toml"]
