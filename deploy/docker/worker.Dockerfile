# srnode GPU worker image: Celery worker running the SR models on CUDA.
# Build from the repository root:  docker build -f deploy/docker/worker.Dockerfile -t srnode-worker .
# The host needs the NVIDIA driver and the NVIDIA Container Toolkit; the CUDA runtime, cuDNN and
# NCCL come with the PyTorch CUDA wheels.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv \
 && useradd --system --uid 10001 --home-dir /var/lib/srnode --create-home srnode
ENV PATH=/opt/venv/bin:$PATH

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
ENTRYPOINT ["srnode"]
CMD ["worker", "--config", "/etc/srnode/srnode.yaml", "--device", "cuda"]
