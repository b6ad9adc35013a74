"""Consume a topic with kafka-python: everything from earliest, then from a timestamp.

Usage: kafka_python_consume.py BROKERS TOPIC EXPECTED TIMESTAMP_MS
Prints one JSON object: values read from earliest, and per partition the offset
offsets_for_times answered for TIMESTAMP_MS plus the values read from there.
"""
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition

brokers, topic, expected, timestamp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", consumer_timeout_ms=10000)
partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
consumer.assign(partitions)
consumer.seek_to_beginning()
values = []
deadline = time.time() + 30
while len(values) < expected and time.time() < deadline:
    for records in consumer.poll(timeout_ms=500).values():
        values.extend(json.loads(r.value)["n"] for r in records)

found = consumer.offsets_for_times({tp: timestamp for tp in partitions})
end_offsets = consumer.end_offsets(partitions)
from_time = {}
for tp, answer in found.items():
    if answer is None:
        from_time[str(tp.partition)] = {"offset": None, "values": []}
        continue
    consumer.assign([tp])
    consumer.seek(tp, answer.offset)
    got = []
    deadline = time.time() + 30
    while answer.offset + len(got) < end_offsets[tp] and time.time() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(json.loads(r.value)["n"] for r in records)
    from_time[str(tp.partition)] = {"offset": answer.offset, "values": got}
print(json.dumps({"earliest": sorted(values), "from_time": from_time}))
