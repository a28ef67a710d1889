# One image for every Procfile process: compose.yaml runs each Procfile line in it
# (`sh -c "<line>"`), as Heroku and honcho do. Python packages come pinned from
# requirements.lock (only those the product needs: the tests' stay out).
# Linted by `make lint` (hadolint); tests/test_packaging.py keeps compose.yaml and
# app.json in step with the Procfile.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /venv
COPY requirements.lock pyproject.toml README.md ./
COPY core core
COPY db db
COPY tasks tasks
COPY service service
COPY dashboard dashboard
COPY stepwise stepwise
COPY api api
# The product's own dependencies, each at the version requirements.lock pins.
RUN /venv/bin/pip install --no-cache-dir --constraint requirements.lock .

FROM ${PYTHON_IMAGE}
ENV PATH=/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STEPWISE_DATA_DIR=/tmp/stepwise
RUN useradd --system --uid 10001 --no-create-home --home-dir /app stepwise
COPY --from=build /venv /venv
WORKDIR /app
# The source tree too: alembic (release), the Procfile, the dashboard's app file; on
# PYTHONPATH, ahead of the installed copy, so every path the code derives is /app's.
COPY --chown=root:root Procfile alembic.ini ./
COPY --chown=root:root alembic alembic
COPY --chown=root:root core core
COPY --chown=root:root db db
COPY --chown=root:root tasks tasks
COPY --chown=root:root service service
COPY --chown=root:root dashboard dashboard
COPY --chown=root:root stepwise stepwise
COPY --chown=root:root api api
USER 10001
EXPOSE 8000 8501
CMD ["stepwise", "doctor"]
