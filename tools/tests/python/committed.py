"""Print a group's committed offsets (confluent-kafka OffsetFetch) as JSON.

Usage: committed.py BROKERS GROUP TOPIC PARTITIONS
"""
import json
import sys

from confluent_kafka import Consumer, TopicPartition

brokers, group, topic, partitions = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
consumer = Consumer({"bootstrap.servers": brokers, "group.id": group})
committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
print(json.dumps({str(tp.partition): tp.offset for tp in committed}))
consumer.close()
