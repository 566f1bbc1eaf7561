# One image for generator, detector and dashboard: `docker run IMAGE detect`.
FROM python:3.11-slim
WORKDIR /usr/app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY requirements.lock pyproject.toml README.md ./
RUN pip install -r requirements.lock
COPY src ./src
COPY rules ./rules
RUN pip install --no-deps .
RUN useradd --create-home fraudstream
USER fraudstream
ENTRYPOINT ["fraudstream"]
CMD ["detect"]
