"""Alembic migrations of the manager's database; run by the manager at start."""
