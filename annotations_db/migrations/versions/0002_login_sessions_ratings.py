"""login sessions; per-study confidence rating scale

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

``login_sessions``: server-side logins that survive a restart (only the sha256 of the cookie token is stored, with
idle and absolute expiry and revocation). ``studies.rating_max``: the maximum of the per-finding confidence rating
(0 = binary answers only); existing studies get 100.

Nothing here touches ``events``, so its append-only triggers (0001) stay as they are; on SQLite the new column is a
plain ``ALTER TABLE ADD COLUMN`` (a constant server default needs no table copy).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('login_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.Column('user_agent', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_login_sessions_reader_id_readers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_login_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_login_sessions_token_hash'))
    )
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_sessions_reader_id'), ['reader_id'], unique=False)

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rating_max', sa.Integer(), server_default='100', nullable=False))
    # studies created before ratings existed collected binary answers: keep them so (0), new ones default to 100
    op.execute("UPDATE studies SET rating_max = 0")


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('rating_max')

    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_sessions_reader_id'))

    op.drop_table('login_sessions')
