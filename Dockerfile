# Quantization Explorer: the app on the built-in models, offline (weights and data are in assets/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 EXPLORER_CACHE=/data/cache \
    EXPLORER_STORE=/data/results.sqlite
# gcc compiles the native AVX2 kernels on first use (explorer/kernels/csrc); curl for the check.
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
ENV EXPLORER_ASSETS=/app/assets
VOLUME /data
EXPOSE 8501
HEALTHCHECK CMD curl -fs http://localhost:8501/_stcore/health || exit 1
CMD ["streamlit", "run", "streamlit_app.py", "--server.address=0.0.0.0", "--server.port=8501"]
