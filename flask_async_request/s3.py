"""The object store: each result an object in an S3-compatible bucket, through boto3.

A result is sent as a multipart upload, one part of :data:`PART_SIZE` bytes at a
time (memory stays bounded), and the object exists only once the upload is
completed: a reader never sees a result being written. An upload a crash cut
short is listed among the bucket's multipart uploads, and the purge aborts it.
The result url answers with a redirect to a short-lived presigned url of the
object: the bytes never pass through the web process.

boto3 is the reference SDK of S3, kept by AWS, and reads its credentials,
region and endpoint the usual way (environment, ``~/.aws``, an instance's or a
container's role; ``AWS_ENDPOINT_URL_S3`` for another S3-compatible server). It
comes with the ``s3`` extra: ``pip install flask-async-request[s3]``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .exceptions import ConfigurationError
from .storage import Leftover, Redirect, ResultMissing, ResultStore, Written, parse_name

logger = logging.getLogger("flask_async_request")

#: Bytes per part of an upload: above S3's least part (5 MiB, but for the last).
PART_SIZE = 8 * 1024 * 1024

#: Bytes read from an object at a time, when the web process streams one itself.
READ_SIZE = 1024 * 1024

#: The headers a result keeps that S3 stores with the object and sends back.
_OBJECT_HEADERS = {
    "Content-Disposition": "ContentDisposition",
    "Content-Language": "ContentLanguage",
    "Content-Encoding": "ContentEncoding",
    "Cache-Control": "CacheControl",
}


def _missing(error: Exception) -> bool:
    """Whether ``error`` is botocore's ``ClientError`` for an object or upload not there."""
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload")


def _has_boto3() -> bool:
    return importlib.util.find_spec("boto3") is not None


class S3Store(ResultStore):
    """Results as objects of ``bucket``, under ``prefix``.

    :param bucket: the bucket, which exists already.
    :param prefix: put before each object's name (``"results/"``); the purge
        deletes the objects under it that are no job's, so give the results a
        prefix of their own.
    :param client: a boto3 S3 client; by default one made with boto3's usual
        configuration, on first use in each process.
    :param expires_in: seconds a presigned url of a result is valid; ``None``:
        ``ASYNC_REQUEST_LINK_EXPIRATION``, as long as a download link.
    :param stale_after: seconds before the purge aborts an upload cut short, or
        deletes an object that is no job's result.
    """

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        expires_in: int | None = None,
        stale_after: float = 3600,
    ) -> None:
        # boto3 is imported on first use (its import takes a tenth of a second).
        if client is None and not _has_boto3():
            raise ConfigurationError(
                "The S3 result store needs boto3: pip install flask-async-request[s3]."
            )
        if not bucket or "/" in bucket:
            raise ValueError(f"{bucket!r} is not a bucket's name.")
        self.bucket = bucket
        self.prefix = prefix
        self.expires_in = expires_in
        self.stale_after = stale_after
        self._client = client

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Store:
        """The store of ``s3://bucket/prefix``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url!r} is not an s3://bucket/prefix url.")
        return cls(parts.netloc, unquote(parts.path.lstrip("/")), **options)

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Signature version 4: what every region takes, and what a presigned url
            # of boto3's default (version 2 on some setups) may not be.
            self._client = boto3.client("s3", config=Config(signature_version="s3v4"))
        return self._client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def location_of(self, name: str) -> str:
        return f"s3://{self.bucket}/{quote(self.prefix + name)}"

    def _key(self, location: str) -> str:
        parts = urlsplit(location)
        key = unquote(parts.path.lstrip("/"))
        if parts.scheme != "s3" or parts.netloc != self.bucket or not key.startswith(self.prefix):
            raise ResultMissing(f"{location!r} is not a result of {self.describe()}.")
        return key

    def owns(self, location: str) -> bool:
        try:
            self._key(location)
        except ResultMissing:
            return False
        return True

    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Written:
        """Upload ``chunks`` in parts; the object appears only when the upload completes."""
        key = self.prefix + name
        extra: dict[str, Any] = {"ContentType": content_type or "application/octet-stream"}
        for header, value in headers or ():
            if header in _OBJECT_HEADERS:
                extra[_OBJECT_HEADERS[header]] = value
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
        upload_id = upload["UploadId"]
        digest = hashlib.sha256()
        size = 0
        parts: list[dict[str, Any]] = []
        # The chunks of the next part: joined once, into the part sent (S3 takes any
        # part of 5 MiB or more but the last), so a part is copied once, not twice.
        pending: list[bytes] = []
        held = 0

        def send() -> None:
            nonlocal held
            number = len(parts) + 1
            data = b"".join(pending)
            pending.clear()
            held = 0
            sent = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})

        try:
            for chunk in chunks:
                if not chunk:
                    continue
                digest.update(chunk)
                size += len(chunk)
                pending.append(chunk)
                held += len(chunk)
                if held >= PART_SIZE:
                    send()
            if pending or not parts:
                send()
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                # The purge aborts it later.
                logger.warning("Could not abort the upload of %s.", key, exc_info=True)
            raise
        return Written(size, digest.hexdigest(), self.location_of(name))

    def read(self, location: str, start: int, stop: int) -> Iterator[bytes]:
        if start >= stop:
            return
        try:
            got = self.client.get_object(
                Bucket=self.bucket, Key=self._key(location), Range=f"bytes={start}-{stop - 1}"
            )
        except Exception as e:
            if _missing(e):
                raise ResultMissing(f"The result {location} is gone.") from None
            raise
        body = got["Body"]
        try:
            yield from body.iter_chunks(READ_SIZE)
        finally:
            body.close()

    def delete(self, location: str) -> None:
        try:
            key = self._key(location)
        except ResultMissing:
            return
        if "?uploadId=" in location:
            # An upload cut short (see leftovers).
            upload_id = location.partition("?uploadId=")[2]
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key.partition("?")[0], UploadId=unquote(upload_id)
                )
            except Exception as e:
                if not _missing(e):
                    raise
            return
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def leftovers(self) -> Iterator[Leftover]:
        now = time.time()
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Contents", ()):
                found = self._leftover(item["Key"], item["LastModified"], now, True)
                if found is not None:
                    yield found
        uploads = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in uploads:
            for item in page.get("Uploads", ()):
                found = self._leftover(item["Key"], item["Initiated"], now, False)
                if found is not None:
                    location = f"{found.location}?uploadId={quote(item['UploadId'], safe='')}"
                    yield found._replace(location=location)

    def _leftover(self, key: str, when: datetime, now: float, complete: bool) -> Leftover | None:
        parsed = parse_name(key[len(self.prefix) :])
        if parsed is None:
            return None
        age = now - when.replace(tzinfo=when.tzinfo or timezone.utc).timestamp()
        location = f"s3://{self.bucket}/{quote(key)}"
        return Leftover(location, parsed[0], parsed[1], age, complete)

    def serve(self, location: str, *, expires_in: int) -> Redirect:
        """A presigned GET url of the object, valid ``expires_in`` seconds (or the store's own)."""
        expires_in = self.expires_in or expires_in
        url = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(location)},
            ExpiresIn=expires_in,
        )
        return Redirect(str(url))
