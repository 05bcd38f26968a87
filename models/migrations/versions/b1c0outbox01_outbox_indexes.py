"""outbox: per-chat ordering index

Revision ID: b1c0outbox01
Revises: 68d50e106925
Create Date: 2026-12-01 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = 'b1c0outbox01'
down_revision: str | None = '68d50e106925'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
