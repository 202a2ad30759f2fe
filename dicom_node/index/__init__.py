"""The durable index: SQLAlchemy 2 models, engine/session helpers, Alembic migrations."""
