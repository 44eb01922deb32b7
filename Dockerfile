# Quantization Explorer: the app on the built-in models, offline (weights and data are in assets/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 EXPLORER_CACHE=/data/cache \
    EXPLORER_STORE=/data/results.sqlite
# gcc compiles the native AVX2 kernels at build time (explorer/kernels/csrc); curl for the check.
# Debian's security updates replace exact versions, so pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The CPU build of torch first: the default index would pull multi-GB CUDA wheels.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY explorer ./explorer
RUN pip install .
COPY assets ./assets
COPY pages ./pages
COPY streamlit_app.py ./
COPY .streamlit ./.streamlit
ENV EXPLORER_ASSETS=/app/assets HOME=/home/explorer
RUN useradd --create-home --uid 10001 explorer && mkdir -p /data && chown explorer /data
USER 10001
# Compile the native kernels (linear and convolution libraries, -Werror) into $EXPLORER_CACHE now
# (checksummed), not in the first user's request; before VOLUME, so that a new volume starts with
# the build (a bind mount that hides it gets one build at first use).
RUN explorer build-kernels
VOLUME /data
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["curl", "-fs", "http://localhost:8501/_stcore/health"]
ENTRYPOINT ["streamlit", "run", "streamlit_app.py", "--server.address=0.0.0.0", "--server.port=8501"]
