"""A real S3 server for tests: moto in server mode, as a subprocess on a free loopback
port, with signature and permission checks on.

moto checks SigV4 signatures and IAM policies once ``INITIAL_NO_AUTH_ACTION_COUNT``
requests have been served; the first three (creating an admin user, its key and its
policy) are the only unchecked ones, so every request after them, ours included, must be
signed correctly by a key whose policy allows it. boto3 is used here, in the test
harness only, to set up users, buckets and objects.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from d7y.daemons.procman import ServiceProcess
from tests.peer_harness import free_port

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
#: create_user, create_access_key, put_user_policy of the admin: unchecked.
_SETUP_ACTIONS = 3
REGION = "us-east-1"


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class MotoS3:
    """``with MotoS3(workdir) as s3:`` -> ``s3.endpoint``, ``s3.admin`` (key ID, secret),
    ``s3.user(...)`` for more keys, ``s3.client()`` for a boto3 client."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "moto.log"
        self.service: ServiceProcess | None = None
        self.admin: tuple[str, str] = ("", "")

    def start(self) -> MotoS3:
        self.service = ServiceProcess(
            "moto_server",
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            log_path=self.log_path,
            env={"INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_ACTIONS)},
            ready=lambda: _accepts(self.port),
        ).start()
        try:
            iam = self.client("iam", ("setup", "setup"))
            iam.create_user(UserName="admin")
            key = iam.create_access_key(UserName="admin")["AccessKey"]
            iam.put_user_policy(
                UserName="admin", PolicyName="all", PolicyDocument=_policy(["*"], "*")
            )
            self.admin = (key["AccessKeyId"], key["SecretAccessKey"])
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, service: str = "s3", keys: tuple[str, str] | None = None):
        import boto3

        key_id, secret = keys or self.admin
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )

    def user(self, name: str, actions: list[str], resource: str = "*") -> tuple[str, str]:
        """A new IAM user allowed ``actions`` on ``resource``; its (key ID, secret)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if actions:
            iam.put_user_policy(
                UserName=name, PolicyName="p", PolicyDocument=_policy(actions, resource)
            )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Create the bucket if needed, store the object; its ETag."""
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
        return s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace=10)

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _policy(actions: list[str], resource: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resource}],
        }
    )
