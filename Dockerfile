# hpo-service: one image for the API, the workers, migrations and the Optuna dashboard.
#   docker build -t hpo-service .                          # TensorFlow on the CPU
#   docker build --build-arg EXTRAS=gpu -t hpo-service .   # with NVIDIA CUDA libraries
#   docker build --build-arg EXTRAS=tensorboard ...       # TensorBoard logs per trial
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=3

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin hpo
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY search_space ./search_space
COPY workers ./workers
COPY migrations ./migrations
RUN pip install ".${EXTRAS:+[$EXTRAS]}"
# Created here, owned by hpo: named volumes mounted on them keep that owner.
RUN mkdir -p /home/hpo/.cache/hpo-service /home/hpo/.keras/datasets /home/hpo/artifacts \
    && chown -R hpo:hpo /home/hpo
ENV HPO_ARTIFACT_DIR=/home/hpo/artifacts

USER hpo
ENTRYPOINT ["hpo"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
