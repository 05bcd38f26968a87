"""review pages at province scale: indexes

Revision ID: b2c0review01
Revises: b1c0outbox01
Create Date: 2026-12-01 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = 'b2c0review01'
down_revision: str | None = 'b1c0outbox01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the queue pages in submission order: (commune, year, status) extended with submitted_at and id
    with op.batch_alter_table('assessment', schema=None) as batch_op:
        batch_op.create_index('ix_assessment_commune_year_status_sub',
                              ['commune_code', 'year', 'status', 'submitted_at', 'id'], unique=False)
        batch_op.drop_index('ix_assessment_commune_year_status')


def downgrade() -> None:
    with op.batch_alter_table('assessment', schema=None) as batch_op:
        batch_op.create_index('ix_assessment_commune_year_status', ['commune_code', 'year', 'status'], unique=False)
        batch_op.drop_index('ix_assessment_commune_year_status_sub')
