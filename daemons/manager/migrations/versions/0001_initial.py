"""The first schema: clusters, schedulers, seed peers, users, tokens, audits.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _times() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("bio", sa.Text(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("scheduler_cluster_config", sa.JSON(), nullable=False),
        sa.Column("seed_peer_cluster_config", sa.JSON(), nullable=False),
        sa.Column("peer_cluster_config", sa.JSON(), nullable=False),
        *_times(),
    )
    for table, extra in (
        ("schedulers", [sa.Column("features", sa.JSON(), nullable=False)]),
        (
            "seed_peers",
            [
                sa.Column("type", sa.String(16), nullable=False),
                sa.Column("download_port", sa.Integer(), nullable=False),
            ],
        ),
    ):
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("hostname", sa.String(256), nullable=False),
            sa.Column("ip", sa.String(64), nullable=False),
            sa.Column("port", sa.Integer(), nullable=False),
            sa.Column("idc", sa.String(256), nullable=False),
            sa.Column("location", sa.String(1024), nullable=False),
            *extra,
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("last_keepalive_at", sa.Float(), nullable=False),
            sa.Column("cluster_id", sa.Integer(), sa.ForeignKey("clusters.id"), nullable=False),
            *_times(),
            sa.UniqueConstraint("hostname", "ip", "cluster_id"),
        )
        op.create_index(f"ix_{table}_cluster_id", table, ["cluster_id"])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("email", sa.String(256), nullable=False),
        sa.Column("password_hash", sa.String(512), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        *_times(),
    )
    op.create_table(
        "personal_access_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("bio", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("token_prefix", sa.String(32), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        *_times(),
    )
    op.create_index("ix_personal_access_tokens_user_id", "personal_access_tokens", ["user_id"])
    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_name", sa.String(256), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_audits_created_at", "audits", ["created_at"])


def downgrade() -> None:
    for table in ("audits", "personal_access_tokens", "users", "seed_peers", "schedulers"):
        op.drop_table(table)
    op.drop_table("clusters")
