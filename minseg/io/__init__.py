from minseg.io.storage import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    StorageError,
    is_s3,
    join_uri,
    parse_uri,
)

__all__ = [
    "AccessDeniedError",
    "BucketNotFoundError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "Storage",
    "StorageError",
    "is_s3",
    "join_uri",
    "parse_uri",
]
