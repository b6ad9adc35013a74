"""Produce N keyed messages with confluent-kafka (librdkafka), acks=all, idempotence on.

Usage: confluent_produce.py BROKERS TOPIC COUNT START
Values are {"n": START + i} for i in 0..COUNT.
Prints one JSON object: delivered count, errors, and the offsets per partition.
"""
import json
import sys

from confluent_kafka import Producer

brokers, topic, count, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
producer = Producer({
    "bootstrap.servers": brokers,
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
})
delivered, errors, offsets = 0, [], {}


def on_delivery(error, message):
    global delivered
    if error is not None:
        errors.append(str(error))
        return
    delivered += 1
    offsets.setdefault(message.partition(), []).append(message.offset())


for i in range(count):
    producer.produce(topic, key=f"user-{i % 17}", value=json.dumps({"n": start + i}), on_delivery=on_delivery)
    producer.poll(0)
remaining = producer.flush(30)
print(json.dumps({"delivered": delivered, "errors": errors, "remaining": remaining,
                  "offsets": {str(p): sorted(o) for p, o in offsets.items()}}))
