"""annotation_objects: the labelled objects of an answer, each with its final mask

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

An answer may hold several labelled objects (``core_model.objects``: right lung, heart, a CT structure …), each with
its own mask. One row per object: its id within the answer (0 = the default, unlabelled object), its label, its mask
stored as ``annotations.mask_rle`` is (and ``slice_index`` / ``mask_slices`` for volumes). ``annotations.mask_rle``
keeps the first object's mask, so every reader of the one-mask schema reads on. Answers saved before this revision
have no rows and read as one default object.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('annotation_objects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('annotation_id', sa.Integer(), nullable=False),
    sa.Column('object_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=True),
    sa.Column('mask_rle', sa.JSON(), nullable=False),
    sa.Column('slice_index', sa.Integer(), nullable=True),
    sa.Column('mask_slices', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['annotation_id'], ['annotations.id'],
                            name=op.f('fk_annotation_objects_annotation_id_annotations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_objects')),
    sa.UniqueConstraint('annotation_id', 'object_id', name=op.f('uq_annotation_objects_annotation_id'))
    )
    with op.batch_alter_table('annotation_objects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotation_objects_annotation_id'), ['annotation_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('annotation_objects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_objects_annotation_id'))
    op.drop_table('annotation_objects')
