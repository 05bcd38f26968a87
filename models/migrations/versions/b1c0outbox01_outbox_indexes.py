"""outbox: per-chat ordering index

Revision ID: b1c0outbox01
Revises: 68d50e106925
Create Date: 2026-12-01 21:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'b1c0outbox01'
down_revision: str | None = '68d50e106925'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_outbox_chat', 'outboxmessage', ['channel', 'chat_id', 'status', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_outbox_chat', table_name='outboxmessage')
