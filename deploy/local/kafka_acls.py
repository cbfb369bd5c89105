"""The KafkaUser manifests (deploy/k8s/platform/kafka-users.yaml, the one source of the users and
their ACLs) applied to the local stack's Kafka in KAFKA_AUTH=scram mode.

    kafka_acls.py users                 the user names, one a line (stack.sh formats Kafka with
                                        a SCRAM-SHA-512 credential for each)
    kafka_acls.py apply BOOTSTRAP       make each user's ACLs exactly the manifest's: create what
                                        is missing, delete what is not in it (allow ACLs,
                                        literal or prefix patterns)

`apply` logs in as the stack's admin user (`BLOG_KAFKA_*`, service_kit.kafka_clients), a super
user of the StandardAuthorizer. aiokafka has no ACL methods, so the requests are its protocol's
CreateAcls / DescribeAcls / DeleteAcls (v1), sent to any broker.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest

from service_kit.kafka_clients import client_options

USERS_FILE = Path(__file__).resolve().parents[2] / "deploy/k8s/platform/kafka-users.yaml"

# Kafka's wire codes (org.apache.kafka.common.acl / resource).
RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactionalId": 5}
OPERATIONS = {
    "All": 2,
    "Read": 3,
    "Write": 4,
    "Create": 5,
    "Delete": 6,
    "Alter": 7,
    "Describe": 8,
    "ClusterAction": 9,
    "DescribeConfigs": 10,
    "AlterConfigs": 11,
    "IdempotentWrite": 12,
}
PATTERN_LITERAL = 3
PATTERN_PREFIXED = 4
PATTERNS = {"literal": PATTERN_LITERAL, "prefix": PATTERN_PREFIXED}
PATTERN_ANY = 1
RESOURCE_ANY = 1
OPERATION_ANY = 1
PERMISSION_ANY = 1
PERMISSION_ALLOW = 3
ANY_HOST = "*"

# (resource type, resource name, pattern type, operation) as wire codes and names.
Acl = tuple[int, str, int, int]


def users(path: Path = USERS_FILE) -> dict[str, set[Acl]]:
    """user name -> its ACLs, from the KafkaUser manifests."""
    found: dict[str, set[Acl]] = {}
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if not doc or doc.get("kind") != "KafkaUser":
            continue
        acls: set[Acl] = set()
        for acl in doc["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            pattern = PATTERNS.get(resource.get("patternType", "literal"))
            if pattern is None or acl.get("type", "allow") != "allow":
                raise SystemExit(f"{path}: only literal or prefix allow ACLs are supported: {acl}")
            for operation in acl["operations"]:
                acls.add(
                    (
                        RESOURCE_TYPES[resource["type"]],
                        resource["name"],
                        pattern,
                        OPERATIONS[operation],
                    )
                )
        found[doc["metadata"]["name"]] = acls
    return found


async def _send(admin: AIOKafkaAdminClient, request: Any) -> Any:
    node = admin._client.get_random_node()
    return await admin._client.send(node, request)


async def current_acls(admin: AIOKafkaAdminClient, principal: str) -> set[Acl]:
    response = await _send(
        admin,
        DescribeAclsRequest(
            RESOURCE_ANY,
            None,  # a null filter: any name
            PATTERN_ANY,
            principal,
            None,  # any host
            OPERATION_ANY,
            PERMISSION_ANY,
        ),
    )
    if response.error_code:
        raise SystemExit(f"DescribeAcls {principal}: error {response.error_code}")
    return {
        (resource_type, name, pattern, operation)
        for resource_type, name, pattern, acls in response.resources
        if pattern in PATTERNS.values()
        for _principal, host, operation, permission in acls
        if host == ANY_HOST and permission == PERMISSION_ALLOW
    }


async def apply(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
    await admin.start()
    try:
        for user, wanted in users().items():
            principal = f"User:{user}"
            have = await current_acls(admin, principal)
            missing, extra = wanted - have, have - wanted
            # One request per ACL: aiokafka's request builders take one entry each.
            for rtype, name, pattern, op in sorted(missing):
                response = await _send(
                    admin,
                    CreateAclsRequest(
                        rtype, name, pattern, principal, ANY_HOST, op, PERMISSION_ALLOW
                    ),
                )
                errors = [e for e in response.creation_responses if e[0]]
                if errors:
                    raise SystemExit(
                        f"CreateAcls {principal} {(rtype, name, pattern, op)}: {errors}"
                    )
            for rtype, name, pattern, op in sorted(extra):
                await _send(
                    admin,
                    DeleteAclsRequest(
                        rtype, name, pattern, principal, ANY_HOST, op, PERMISSION_ALLOW
                    ),
                )
            print(
                f"{principal}: {len(wanted)} ACL(s), {len(missing)} created, {len(extra)} deleted"
            )
    finally:
        await admin.close()
    return 0


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["users"]:
        print("\n".join(users()))
        return 0
    if len(argv) == 2 and argv[0] == "apply":
        return asyncio.run(apply(argv[1]))
    print("usage: kafka_acls.py users | apply BOOTSTRAP", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
