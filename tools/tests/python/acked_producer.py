"""Produce {"n": i} forever with confluent-kafka (acks=all, idempotent), printing one line
"partition offset n" per acknowledged message. The broker may die and come back under
it; librdkafka reconnects and retries. Exits after SECONDS.

Usage: acked_producer.py BROKERS TOPIC SECONDS
"""
import json
import sys
import time

from confluent_kafka import Producer

brokers, topic, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
producer = Producer({
    "bootstrap.servers": brokers,
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 2,
    "message.timeout.ms": 60000,
    "reconnect.backoff.ms": 20,
    "reconnect.backoff.max.ms": 200,
})


def on_delivery(error, message):
    if error is None:
        n = json.loads(message.value())["n"]
        sys.stdout.write(f"{message.partition()} {message.offset()} {n}\n")
        sys.stdout.flush()


end = time.time() + seconds
i = 0
while time.time() < end:
    try:
        producer.produce(topic, key=f"k{i % 13}", value=json.dumps({"n": i}), on_delivery=on_delivery)
        i += 1
    except BufferError:
        pass
    producer.poll(0.001)
producer.flush(60)
