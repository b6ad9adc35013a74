"""Read every record of a topic from earliest to its end offsets with kafka-python.

Usage: read_topic.py BROKERS TOPIC
Prints one JSON list of [partition, offset, value-as-text], ordered by partition and offset.
"""
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition

brokers, topic = sys.argv[1], sys.argv[2]
consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", consumer_timeout_ms=10000)
partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
consumer.assign(partitions)
consumer.seek_to_beginning()
end = consumer.end_offsets(partitions)
records = []
deadline = time.time() + 60
while any(consumer.position(tp) < end[tp] for tp in partitions) and time.time() < deadline:
    for batch in consumer.poll(timeout_ms=500).values():
        records.extend([r.partition, r.offset, r.value.decode()] for r in batch)
records.sort(key=lambda r: (r[0], r[1]))
print(json.dumps(records))
