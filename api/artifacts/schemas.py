"""Artifact resources as the API shows them."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from squeezer.store.jobs import as_utc


class ArtifactOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "art_3f2c9a",
                    "kind": "model",
                    "filename": "lenet5.zip",
                    "content_type": "application/zip",
                    "size_bytes": 245_760,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ]
        },
    )

    id: str
    kind: str = Field(description="model | dataset | result")
    filename: str
    content_type: str
    size_bytes: int
    sha256: str | None
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return as_utc(value)
