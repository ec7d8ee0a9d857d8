"""Job spec sizes: a job's stored spec counts toward its tenant's storage quota.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("spec_bytes", sa.BigInteger(), server_default="0", nullable=False))
    # Existing jobs: the size of the spec as the database holds it (the API stores compact JSON; close enough).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE jobs SET spec_bytes = octet_length(spec::text)")
    else:
        op.execute("UPDATE jobs SET spec_bytes = length(CAST(spec AS BLOB))")


def downgrade() -> None:
    op.drop_column("jobs", "spec_bytes")
