# srnode node image: DICOM listener, routing, outbox sender, admin API/console. No CUDA.
# Build from the repository root:  docker build -f deploy/docker/node.Dockerfile -t srnode-node .
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# The CPU wheels: the node only interpolates or runs the embedded worker on CPU.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN useradd --system --uid 10001 --home-dir /var/lib/srnode --create-home srnode

WORKDIR /opt/srnode
RUN pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}
COPY setup.cfg pyproject.toml README.md ./
COPY config ./config
COPY dicom_node ./dicom_node
COPY workers ./workers
COPY sr_engine ./sr_engine
COPY training ./training
RUN pip install .

# The shipped CT checkpoint and its model card (registered in deploy/srnode.yaml).
COPY models /opt/srnode/models
COPY deploy/srnode.yaml /etc/srnode/srnode.yaml
USER srnode
VOLUME ["/var/lib/srnode"]
# DICOM, admin API/console/metrics
EXPOSE 11112 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4).status != 200)"
# `serve` applies pending index migrations before it listens.
ENTRYPOINT ["srnode"]
CMD ["serve", "--config", "/etc/srnode/srnode.yaml"]
