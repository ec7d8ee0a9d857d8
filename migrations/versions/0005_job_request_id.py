"""Job request ids: the X-Request-ID of the submission, so a worker's log lines for the job carry it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request_id", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "request_id")
