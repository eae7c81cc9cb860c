"""AI sources: kind, origin and evidence card of each model version

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

A findings AI source is a ``model_versions`` row: the built-in model of a checkpoint, imported predictions (CXR-LT
submission CSV) or a local torchxrayvision model. ``kind`` (built-in | imported | torchxrayvision), ``origin`` (where
it came from, in words) and ``card`` (the core_model.findings.FindingsCard as JSON: evidence per class and the
suggestion rule). Existing rows become kind built-in without a card.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=32), server_default='built-in', nullable=False))
        batch_op.add_column(sa.Column('origin', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('card', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('card')
        batch_op.drop_column('origin')
        batch_op.drop_column('kind')
