"""Bucket chores against an S3 endpoint (the moto server in tests), with boto3.

usage: s3.py ENDPOINT create BUCKET
       s3.py ENDPOINT download BUCKET PREFIX DEST     # prints {"keys": [...]}
       s3.py ENDPOINT copy BUCKET FROM_KEY TO_KEY
"""
import json
import os
import sys

import boto3

endpoint, command, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="test",
    aws_secret_access_key="test",
    region_name="us-east-1",
)
if command == "create":
    s3.create_bucket(Bucket=bucket)
    print(json.dumps({"created": bucket}))
elif command == "download":
    prefix, dest = sys.argv[4], sys.argv[5]
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            keys.append(key)
            path = os.path.join(dest, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, key, path)
    print(json.dumps({"keys": sorted(keys)}))
elif command == "copy":
    s3.copy_object(Bucket=bucket, Key=sys.argv[5], CopySource={"Bucket": bucket, "Key": sys.argv[4]})
    print(json.dumps({"copied": sys.argv[5]}))
else:
    sys.exit(f"unknown command {command}")
