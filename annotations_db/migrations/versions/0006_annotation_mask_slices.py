"""annotations.mask_slices: the slices of a volume answer's 3-D mask that hold the reader's masks

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A volume answer now saves ONE 3-D mask (``mask_rle`` with its ``shape``, the volume's voxel grid) and the sorted
list of axial slice indices the reader drew or accepted a mask on (``mask_slices``, JSON list of ints). Older rows
(a 2-D mask + ``slice_index``) stay as they are and read the same; 2-D answers leave the column NULL.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mask_slices', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.drop_column('mask_slices')
