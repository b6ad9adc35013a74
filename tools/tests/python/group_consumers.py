"""Two confluent-kafka consumers in one group split a topic's partitions and commit;
after one leaves, the other takes over from the committed offsets.

Usage: group_consumers.py BROKERS TOPIC GROUP FIRST_COUNT SECOND_COUNT
The topic already holds FIRST_COUNT messages {"n": 0..FIRST_COUNT}; the script produces
SECOND_COUNT more after the first consumer leaves. Prints one JSON object.
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer

brokers, topic, group, first, second = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])


def consumer(name):
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": group,
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 300,
        "partition.assignment.strategy": "range",
    })
    c.subscribe([topic])
    return c


consumed = {"a": [], "b": []}
uncommitted = []  # values whose commit failed (a rebalance was under way): may be read again
a, b = consumer("a"), consumer("b")


def poll(name, c):
    message = c.poll(0.1)
    if message is None or message.error():
        return
    value = json.loads(message.value())["n"]
    consumed[name].append(value)
    try:
        c.commit(message=message, asynchronous=False)
    except KafkaException:
        uncommitted.append(value)


deadline = time.time() + 60
while len(set(consumed["a"]) | set(consumed["b"])) < first and time.time() < deadline:
    poll("a", a)
    poll("b", b)
assignment_a = sorted(p.partition for p in a.assignment())
assignment_b = sorted(p.partition for p in b.assignment())
b.close()  # LeaveGroup: a takes over b's partitions from b's committed offsets

producer = Producer({"bootstrap.servers": brokers, "acks": "all"})
for i in range(second):
    producer.produce(topic, key=f"user-{i % 17}", value=json.dumps({"n": first + i}))
producer.flush(30)

deadline = time.time() + 60
while len(set(consumed["a"]) | set(consumed["b"])) < first + second and time.time() < deadline:
    poll("a", a)
final_assignment_a = sorted(p.partition for p in a.assignment())
a.close()
print(json.dumps({
    "assignment_a": assignment_a, "assignment_b": assignment_b,
    "final_assignment_a": final_assignment_a, "consumed": consumed, "uncommitted": uncommitted,
}))
