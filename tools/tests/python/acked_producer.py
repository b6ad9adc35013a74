"""Produce {"n": i} forever with confluent-kafka (acks=all, idempotent), printing one line
"partition offset n" per acknowledged message. The broker may die and come back under
it; librdkafka reconnects and retries. Stops producing after SECONDS or at SIGTERM,
whichever comes first, then flushes; exits non-zero when any message was not delivered
(a partition that refuses appends after a restart fails the run).

Usage: acked_producer.py BROKERS TOPIC SECONDS [PAD_BYTES]
"""
import json
import signal
import sys
import time

from confluent_kafka import Producer

brokers, topic, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
pad = "x" * int(sys.argv[4]) if len(sys.argv) > 4 else ""
producer = Producer({
    "bootstrap.servers": brokers,
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 2,
    "message.timeout.ms": 60000,
    "reconnect.backoff.ms": 20,
    "reconnect.backoff.max.ms": 200,
})


failed = 0


def on_delivery(error, message):
    global failed
    if error is not None:
        failed += 1
        sys.stderr.write(f"not delivered: {error}\n")
    if error is None:
        n = json.loads(message.value())["n"]
        sys.stdout.write(f"{message.partition()} {message.offset()} {n}\n")
        sys.stdout.flush()


stopping = False


def on_term(_signum, _frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
end = time.time() + seconds
i = 0
while time.time() < end and not stopping:
    try:
        producer.produce(topic, key=f"k{i % 13}", value=json.dumps({"n": i, "pad": pad}), on_delivery=on_delivery)
        i += 1
    except BufferError:
        pass
    producer.poll(0.001)
remaining = producer.flush(60)
sys.exit(1 if failed or remaining else 0)
