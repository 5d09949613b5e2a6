"""An S3-compatible server on loopback for the object store's tests: moto's server mode.

moto keeps the buckets in its process's memory and checks requests as S3 does
for what the store uses (multipart uploads, their listing and abort, ranged
GETs, presigned urls and their expiry, object metadata). It does not check
credentials against real accounts, nor model S3's consistency, throughput,
lifecycle rules (``AbortIncompleteMultipartUpload``) or a region's limits, and
it reports every multipart upload as initiated on 2010-11-10: the age of an
upload cut short is not exercised against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

BUCKET = "far-results"

#: What boto3 needs to reach the server, in the environment of a process (a worker's).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server(NamedTuple):
    """A running moto server: its endpoint, a client of it, and its bucket."""

    endpoint: str
    client: Any
    bucket: str

    def environment(self) -> dict[str, str]:
        """The variables that point boto3's usual configuration at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def keys(self) -> list[str]:
        """The keys of the bucket's objects."""
        listed = self.client.list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listed.get("Contents", ()))

    def uploads(self) -> list[str]:
        """The keys of the bucket's multipart uploads in progress."""
        listed = self.client.list_multipart_uploads(Bucket=self.bucket)
        return sorted(item["Key"] for item in listed.get("Uploads", ()))

    def empty(self) -> None:
        """Delete every object and abort every upload."""
        for key in self.keys():
            self.client.delete_object(Bucket=self.bucket, Key=key)
        listed = self.client.list_multipart_uploads(Bucket=self.bucket)
        for upload in listed.get("Uploads", ()):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )


def serve(monkeypatch: pytest.MonkeyPatch | None = None) -> Iterator[S3Server]:
    """Start moto's server on 127.0.0.1 with a bucket; skip the test if moto is missing."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    boto3 = pytest.importorskip("boto3")
    botocore_config = pytest.importorskip("botocore.config")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            config=botocore_config.Config(signature_version="s3v4"),
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint, client, BUCKET)
    finally:
        server.stop()
