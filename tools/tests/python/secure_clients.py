"""Clients we did not write, over TLS and SASL, against a real `corelog serve`.

Usage: secure_clients.py ACTION JSON_ARGS; prints one JSON object.

Actions:
  roundtrip  confluent-kafka (librdkafka) produces `n` values with acks=all and
             idempotence, then reads them back in consumer group `group`.
  denied     what a principal without ACLs meets: produce, group join, topic
             creation; the Kafka error name of each (fetch is checked on the wire).
  topics     the topics Metadata lists to this principal.
  admin_acls confluent-kafka's AdminClient creates, describes and deletes ACLs.
  admin_users  the AdminClient adds a SCRAM user and describes it.
  mtls       kafka-python over SSL with a client certificate: produce, then read back.
  wrong_password  a SCRAM login with a bad password: the error it ends with.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

TIMEOUT_S = 30


def config(a, **extra):
    c = {
        "bootstrap.servers": a["brokers"],
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": a["mechanism"],
        "sasl.username": a["user"],
        "sasl.password": a["password"],
        "ssl.ca.location": a["ca"],
    }
    c.update(extra)
    return c


def produce(a, topic, values):
    errors = []
    delivered = []

    def report(err, msg):
        if err is not None:
            errors.append(err.name())
        else:
            delivered.append(msg.offset())

    p = Producer(config(a, **{"acks": "all", "enable.idempotence": True, "message.timeout.ms": 15000}))
    for v in values:
        p.produce(topic, value=str(v).encode(), on_delivery=report)
    p.flush(TIMEOUT_S)
    return delivered, errors


def read_group(a, topic, group, n):
    c = Consumer(config(a, **{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    c.subscribe([topic])
    values, errors = [], []
    deadline = time.time() + TIMEOUT_S
    while len(values) < n and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                errors.append(m.error().name())
                break
            continue
        values.append(int(m.value()))
    if values:
        c.commit(asynchronous=False)
    c.close()
    return values, errors


def roundtrip(a):
    start = a.get("start", 0)
    delivered, errors = produce(a, a["topic"], range(start, start + a["n"]))
    values, read_errors = read_group(a, a["topic"], a["group"], a["n"])
    return {"delivered": len(delivered), "errors": errors, "read": values, "read_errors": read_errors}


def errors_within(consumer, wanted, seconds=TIMEOUT_S):
    """Polls until error `wanted` shows (or time runs out); every error name seen."""
    seen = []
    deadline = time.time() + seconds
    while time.time() < deadline and wanted not in seen:
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error() and m.error().code() != KafkaError._PARTITION_EOF:
            seen.append(m.error().name())
        elif not m.error():
            seen.append("READ")
            break
    return seen


def denied(a):
    out = {}
    _, errors = produce(a, a["topic"], [1])
    out["produce"] = errors[0] if errors else "NONE"
    c = Consumer(config(a, **{"group.id": a["group"], "auto.offset.reset": "earliest"}))
    c.subscribe([a["topic"]])
    out["join"] = errors_within(c, "GROUP_AUTHORIZATION_FAILED")
    c.close()
    admin = AdminClient(config(a))
    futures = admin.create_topics([NewTopic(a["topic"] + "-new", num_partitions=1, replication_factor=1)])
    try:
        futures[a["topic"] + "-new"].result(TIMEOUT_S)
        out["create"] = "NONE"
    except KafkaException as e:
        out["create"] = e.args[0].name()
    return out


def topics(a):
    admin = AdminClient(config(a))
    return {"topics": sorted(admin.list_topics(timeout=TIMEOUT_S).topics.keys())}


def admin_acls(a):
    admin = AdminClient(config(a))
    allow = AclBinding(
        ResourceType.TOPIC, a["topic"], ResourcePatternType.PREFIXED, a["principal"], "*",
        AclOperation.READ, AclPermissionType.ALLOW,
    )
    deny = AclBinding(
        ResourceType.TOPIC, a["topic"] + "-x", ResourcePatternType.LITERAL, a["principal"], "*",
        AclOperation.READ, AclPermissionType.DENY,
    )
    try:
        for f in admin.create_acls([allow, deny]).values():
            f.result(TIMEOUT_S)
    except KafkaException as e:
        return {"error": e.args[0].name()}
    described = admin.describe_acls(
        AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY, a["principal"], None,
            AclOperation.ANY, AclPermissionType.ANY,
        )
    ).result(TIMEOUT_S)
    deleted = []
    for f in admin.delete_acls(
        [AclBindingFilter(ResourceType.TOPIC, a["topic"] + "-x", ResourcePatternType.LITERAL, None, None,
                          AclOperation.ANY, AclPermissionType.DENY)]
    ).values():
        deleted.extend(f.result(TIMEOUT_S))
    return {
        "described": sorted(f"{b.name}:{b.resource_pattern_type.name}:{b.permission_type.name}" for b in described),
        "deleted": len(deleted),
    }


def admin_users(a):
    """AlterUserScramCredentials and DescribeUserScramCredentials through the AdminClient."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
    admin = AdminClient(config(a))
    upsert = UserScramCredentialUpsertion(
        a["new_user"], ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192), a["new_password"].encode()
    )
    try:
        for f in admin.alter_user_scram_credentials([upsert]).values():
            f.result(TIMEOUT_S)
    except KafkaException as e:
        return {"error": e.args[0].name()}
    described = admin.describe_user_scram_credentials([a["new_user"]])
    infos = [
        (i.mechanism.name, i.iterations)
        for f in described.values()
        for i in f.result(TIMEOUT_S).scram_credential_infos
    ]
    return {"described": infos}


def mtls(a):
    from kafka import KafkaConsumer, KafkaProducer
    tls = dict(
        bootstrap_servers=a["brokers"], security_protocol="SSL", ssl_cafile=a["ca"],
        ssl_certfile=a["cert"], ssl_keyfile=a["key"],
    )
    p = KafkaProducer(acks="all", **tls)
    offsets = [p.send(a["topic"], str(i).encode()).get(timeout=TIMEOUT_S).offset for i in range(a["n"])]
    p.close()
    c = KafkaConsumer(a["topic"], auto_offset_reset="earliest", consumer_timeout_ms=5000, **tls)
    values = [int(m.value) for m in c]
    c.close()
    return {"offsets": offsets, "read": values}


def wrong_password(a):
    """librdkafka reports a failed login through its error callback."""
    seen = []
    p = Producer(config(a, error_cb=lambda e: seen.append(e)))
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and not any(e.code() == KafkaError._AUTHENTICATION for e in seen):
        p.poll(0.2)
    failed = [e for e in seen if e.code() == KafkaError._AUTHENTICATION]
    if not failed:
        return {"error": seen[0].name() if seen else "NONE"}
    return {"error": failed[0].name(), "message": failed[0].str()}


if __name__ == "__main__":
    action, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[action](args)))
