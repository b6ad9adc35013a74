"""Delete one topic with confluent-kafka's AdminClient.

Usage: delete_topic.py BROKERS TOPIC
Prints one JSON object: the topic deleted.
"""
import json
import sys

from confluent_kafka.admin import AdminClient

admin = AdminClient({"bootstrap.servers": sys.argv[1]})
admin.delete_topics([sys.argv[2]])[sys.argv[2]].result(10)
print(json.dumps({"deleted": sys.argv[2]}))
