"""Reads Kinesis records back into user records with AWS's own de-aggregation
library (aws-kinesis-agg), for the producer's aggregation tests.

Reads JSON lines from standard input, one Kinesis record each:
  {"seq": sequence_number, "pk": partition_key, "data_hex": data}
and writes one JSON line per user record:
  {"seq", "sub" (null for a record that was not an aggregate), "pk", "ehk", "data"}
with data decoded as UTF-8.
"""

import base64
import json
import sys

from aws_kinesis_agg.deaggregator import iter_deaggregate_records


def main():
    records = []
    for line in sys.stdin:
        if not line.strip():
            continue
        record = json.loads(line)
        records.append({
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "sequenceNumber": record["seq"],
                "partitionKey": record["pk"],
                "approximateArrivalTimestamp": 0,
                "data": base64.b64encode(bytes.fromhex(record["data_hex"])),
            }
        })
    for user in iter_deaggregate_records(records):
        kinesis = user["kinesis"]
        print(json.dumps({
            "seq": kinesis["sequenceNumber"],
            "sub": kinesis.get("subSequenceNumber"),
            "pk": kinesis["partitionKey"],
            "ehk": kinesis.get("explicitHashKey"),
            "data": base64.b64decode(kinesis["data"]).decode("utf-8"),
        }))


if __name__ == "__main__":
    main()
