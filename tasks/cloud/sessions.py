"""boto3 sessions of one pool: its region, its endpoint, and (another account) a role assumed with STS."""

from __future__ import annotations

import functools
from typing import Any

import boto3
import botocore.session
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

# Assumed-role credentials last an hour by default; botocore refreshes them this
# long before they expire, in whichever thread needs them first.
ROLE_SESSION_PREFIX = "warmpool-"


def pool_session(
    *, region: str, endpoint_url: str = "", role_arn: str = "", external_id: str = "", pool: str = ""
) -> boto3.session.Session:
    """A session for one pool's AWS calls: default credentials, or ``role_arn`` assumed (and renewed) via STS."""
    if not role_arn:
        return boto3.session.Session(region_name=region)
    source = boto3.session.Session(region_name=region)
    extra: dict[str, Any] = {"RoleSessionName": (ROLE_SESSION_PREFIX + (pool or "pool"))[:64]}
    if external_id:
        extra["ExternalId"] = external_id
    sts_options: dict[str, Any] = {"region_name": region}
    if endpoint_url:
        sts_options["endpoint_url"] = endpoint_url
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=functools.partial(source._session.create_client, **sts_options),
        source_credentials=source._session.get_credentials(),
        role_arn=role_arn,
        extra_args=extra,
    )
    core = botocore.session.Session()
    # Renewed on use before expiry: a worker that runs for days keeps valid credentials.
    credentials = DeferredRefreshableCredentials(method="assume-role", refresh_using=fetcher.fetch_credentials)
    core._credentials = credentials  # type: ignore[attr-defined]
    return boto3.session.Session(botocore_session=core, region_name=region)
