"""Alembic environment: the URL comes from Stepwise's settings, never from alembic.ini."""

from sqlalchemy import create_engine, pool

from alembic import context
from core.logs import configure_logging
from core.settings import get_settings
from db.models import Base

config = context.config
if config.attributes.get("configure_logging", True):
    configure_logging()  # `alembic upgrade head` (the release process) logs as every process


def run_migrations_online() -> None:
    url = config.attributes.get("url") or get_settings().database_url
    if not url:
        raise SystemExit("DATABASE_URL is not set: nothing to migrate")
    engine = create_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={"prepare_threshold": get_settings().db_prepare_threshold},
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
