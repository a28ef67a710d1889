"""/v1/channels and /v1/deliveries: a workspace's notification channels and their outcomes.

The same `service.channels` functions and `db` reads as the dashboard's Workspace
page: any member lists channels (redacted, never the URL) and deliveries; only admins
add, delete and test a channel, each audited. A channel's URL is sealed at rest and
never returned, not even to the admin who sent it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Acting
from api.problems import documented
from api.schemas import Input
from db import notices
from db.channels import ChannelInfo
from db.channels import list_channels as channels_of
from service import channels
from service.unit import read

router = APIRouter(tags=["notifications"], responses=documented(400, 401, 403, 404, 422))


class ChannelIn(Input):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "on-call", "url": "json://hooks.example.com/stepwise"}]
        }
    )

    name: str
    url: str = Field(
        description="an apprise URL (json://, mailto://, slack://, …); sealed, never shown again"
    )


class ChannelOut(BaseModel):
    id: uuid.UUID
    name: str
    redacted: str = Field(description="the URL with its credentials and tokens hidden")
    created_by: str
    created_at: datetime


class TestOut(BaseModel):
    ok: bool
    error: str | None = Field(description="why the test message was not delivered")


class DeliveryOut(BaseModel):
    created_at: datetime
    channel_name: str
    automation: str | None
    kind: str
    status: str
    error: str | None
    finished_at: datetime | None


def _channel(info: ChannelInfo) -> ChannelOut:
    return ChannelOut(
        id=info.id,
        name=info.name,
        redacted=info.redacted,
        created_by=info.created_by,
        created_at=info.created_at,
    )


@router.get("/v1/channels")
def list_channels(actor: Acting) -> list[ChannelOut]:
    """The workspace's notification channels by name, their URLs redacted."""
    return [_channel(c) for c in read(channels_of, actor=actor)]


@router.post("/v1/channels", status_code=status.HTTP_201_CREATED)
def add_channel(body: ChannelIn, actor: Acting) -> ChannelOut:
    """Add a channel (admins only, audited); its URL is sealed and only shown redacted."""
    return _channel(channels.add_channel(body.name, body.url, actor=actor))


@router.delete("/v1/channels/{channel_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_channel(channel_id: uuid.UUID, actor: Acting) -> Response:
    """Delete a channel (admins only, audited); automations stop sending to it."""
    channels.delete_channel(channel_id, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/channels/{channel_id}/test")
def test_channel(channel_id: uuid.UUID, actor: Acting) -> TestOut:
    """Send a test message now (admins only, audited), recorded like every delivery."""
    outcome = channels.send_test(channel_id, actor=actor)
    return TestOut(ok=outcome.ok, error=outcome.error)


@router.get("/v1/deliveries")
def list_deliveries(
    actor: Acting, limit: Annotated[int, Query(ge=1, le=100)] = 100
) -> list[DeliveryOut]:
    """The workspace's newest notification deliveries with their outcomes."""
    rows = read(notices.list_deliveries, actor=actor, limit=limit)
    return [DeliveryOut(**vars(row)) for row in rows]
