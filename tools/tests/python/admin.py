"""Create, list and delete topics with confluent-kafka's AdminClient.

Usage: admin.py BROKERS
Prints one JSON object with what each step saw.
"""
import json
import sys

from confluent_kafka.admin import AdminClient, NewTopic

admin = AdminClient({"bootstrap.servers": sys.argv[1]})
result = {}
for topic, future in admin.create_topics([NewTopic("admin-a", 5, 1), NewTopic("admin-b", 2, 1)]).items():
    future.result(10)
result["created"] = {t.topic: len(t.partitions) for t in admin.list_topics(timeout=10).topics.values()}
try:
    admin.create_topics([NewTopic("admin-a", 1, 1)])["admin-a"].result(10)
    result["duplicate"] = "accepted"
except Exception as error:  # the broker answers TOPIC_ALREADY_EXISTS
    result["duplicate"] = error.args[0].name()
for topic, future in admin.delete_topics(["admin-a"]).items():
    future.result(10)
result["after_delete"] = sorted(admin.list_topics(timeout=10).topics)
print(json.dumps(result))
