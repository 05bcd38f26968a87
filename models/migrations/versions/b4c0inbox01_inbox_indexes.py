"""inboxupdate: a partial index of the pending rows in order; the chat index led by chat_key

Revision ID: b4c0inbox01
Revises: b3c0proposal01
Create Date: 2026-12-06 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'b4c0inbox01'
down_revision: str | None = 'b3c0proposal01'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table('inboxupdate', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_pending')
        batch_op.drop_index('ix_inbox_chat_pending')
        batch_op.create_index('ix_inbox_pending', ['id'], unique=False,
                              sqlite_where=PENDING, postgresql_where=PENDING)
        batch_op.create_index('ix_inbox_chat', ['chat_key', 'channel', 'status', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inboxupdate', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_chat')
        batch_op.drop_index('ix_inbox_pending')
        batch_op.create_index('ix_inbox_chat_pending', ['channel', 'chat_key', 'status'], unique=False)
        batch_op.create_index('ix_inbox_pending', ['status', 'id'], unique=False)
