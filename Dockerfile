# One image for generator, detector and dashboard: `docker run IMAGE detect`.
FROM python:3.11-slim
WORKDIR /usr/app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY requirements.lock pyproject.toml README.md ./
RUN pip install -r requirements.lock
COPY src ./src
COPY rules ./rules
RUN pip install --no-deps .
# the apps run as fraudstream; the detector keeps its state (hash seed, snapshots) in
# STATE_DIR, .fraudstream/state under the working directory
RUN useradd --create-home fraudstream \
 && mkdir -p /usr/app/.fraudstream/state && chown -R fraudstream /usr/app/.fraudstream
USER fraudstream
ENTRYPOINT ["fraudstream"]
CMD ["detect"]
