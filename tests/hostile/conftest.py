"""The API fixtures (PostgreSQL, database blob storage, a broker no worker reads) serve the hostile corpus too."""

from tests.api.conftest import api_settings, queued_client, sample_model_zip  # noqa: F401
from tests.store.conftest import pg_sessions  # noqa: F401
