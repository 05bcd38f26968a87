"""outboxmessage: the ready index holds only the queued rows; a partial index of the rows in flight

Revision ID: b5c0outbox02
Revises: b4c0inbox01
Create Date: 2026-12-07 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'b5c0outbox02'
down_revision: str | None = 'b4c0inbox01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status = 'queued'")
SENDING = sa.text("status = 'sending'")


def upgrade() -> None:
    with op.batch_alter_table('outboxmessage', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_ready')
        batch_op.create_index('ix_outbox_ready', ['channel', 'priority', 'not_before', 'id'], unique=False,
                              sqlite_where=QUEUED, postgresql_where=QUEUED)
        batch_op.create_index('ix_outbox_sending', ['channel', 'not_before'], unique=False,
                              sqlite_where=SENDING, postgresql_where=SENDING)


def downgrade() -> None:
    with op.batch_alter_table('outboxmessage', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_sending')
        batch_op.drop_index('ix_outbox_ready')
        batch_op.create_index('ix_outbox_ready', ['channel', 'status', 'priority', 'not_before', 'id'], unique=False)
