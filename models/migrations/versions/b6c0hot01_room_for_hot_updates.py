"""assessment, conversation: pages filled to 70 % (PostgreSQL), room for HOT updates; the outbox's campaign index
holds only the reminder rows

Revision ID: b6c0hot01
Revises: b5c0outbox02
Create Date: 2026-12-08 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'b6c0hot01'
down_revision: str | None = 'b5c0outbox02'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_CAMPAIGN = sa.text("campaign IS NOT NULL")
ROOM = ('assessment', 'conversation')


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        # new pages only: a table's existing full pages get room as their rows move (or at a VACUUM FULL)
        for table in ROOM:
            op.execute(f'ALTER TABLE {table} SET (fillfactor = 70)')
    with op.batch_alter_table('outboxmessage', schema=None) as batch_op:
        batch_op.drop_index('ix_outboxmessage_campaign')
        batch_op.create_index('ix_outboxmessage_campaign', ['campaign'], unique=False,
                              sqlite_where=HAS_CAMPAIGN, postgresql_where=HAS_CAMPAIGN)


def downgrade() -> None:
    with op.batch_alter_table('outboxmessage', schema=None) as batch_op:
        batch_op.drop_index('ix_outboxmessage_campaign')
        batch_op.create_index('ix_outboxmessage_campaign', ['campaign'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        for table in ROOM:
            op.execute(f'ALTER TABLE {table} RESET (fillfactor)')
