"""training jobs, the model registry and promotions, site settings

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

``site_settings``: this site's settings (the held-out split's salt and share). ``training_jobs``: training runs asked
for from the app and run by ``launch.py worker`` processes (claim under a lease, progress, cancel); ``job_events``:
their loss curve and log. ``model_checkpoints``: the model registry (every checkpoint, its parent, data, recipe, the
promotion gate's evaluation, its state); ``model_promotions``: which checkpoint is in use since when (rollback = a
promotion of an earlier one). New tables only.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('site_settings',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_site_settings'))
    )
    op.create_table('training_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('task', sa.String(length=16), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('claim_token', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('total_steps', sa.Integer(), nullable=True),
    sa.Column('loss', sa.Float(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['readers.id'], name=op.f('fk_training_jobs_created_by_readers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_jobs'))
    )
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_training_jobs_lease_until'), ['lease_until'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_status'), ['status'], unique=False)

    op.create_table('job_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['training_jobs.id'], name=op.f('fk_job_events_job_id_training_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_events'))
    )
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.create_index('ix_job_events_job_id_id', ['job_id', 'id'], unique=False)

    op.create_table('model_checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.Column('recipe', sa.JSON(), nullable=True),
    sa.Column('evaluation', sa.JSON(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['readers.id'], name=op.f('fk_model_checkpoints_created_by_readers')),
    sa.ForeignKeyConstraint(['job_id'], ['training_jobs.id'], name=op.f('fk_model_checkpoints_job_id_training_jobs')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_model_checkpoints_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['parent_id'], ['model_checkpoints.id'], name=op.f('fk_model_checkpoints_parent_id_model_checkpoints')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_checkpoints')),
    sa.UniqueConstraint('model_version_id', name=op.f('uq_model_checkpoints_model_version_id'))
    )
    op.create_table('model_promotions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('checkpoint_id', sa.Integer(), nullable=False),
    sa.Column('previous_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('by', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['by'], ['readers.id'], name=op.f('fk_model_promotions_by_readers')),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['model_checkpoints.id'], name=op.f('fk_model_promotions_checkpoint_id_model_checkpoints')),
    sa.ForeignKeyConstraint(['previous_id'], ['model_checkpoints.id'], name=op.f('fk_model_promotions_previous_id_model_checkpoints')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_promotions'))
    )
    with op.batch_alter_table('model_promotions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_promotions_checkpoint_id'), ['checkpoint_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('model_promotions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_promotions_checkpoint_id'))

    op.drop_table('model_promotions')
    op.drop_table('model_checkpoints')
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.drop_index('ix_job_events_job_id_id')

    op.drop_table('job_events')
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_training_jobs_lease_until'))

    op.drop_table('training_jobs')
    op.drop_table('site_settings')
