# fleet-mcp-proxy over streamable HTTP. The image installs the package the same way the README does.
#   docker build -t fleet-mcp-proxy . && docker run --rm -p 8000:8000 fleet-mcp-proxy
# Clients reach http://localhost:8000/mcp (loopback Host names are always allowed; add others with
# allowed_hosts in a config file mounted at /config.toml and `--config /config.toml`).
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 proxy
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fleet_mcp_proxy ./fleet_mcp_proxy
RUN pip install --no-cache-dir . && rm -rf /root/.cache
USER proxy
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
ENTRYPOINT ["fleet-mcp-proxy"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
