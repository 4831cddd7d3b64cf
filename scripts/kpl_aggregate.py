"""Makes KPL aggregates with AWS's own aggregation library (aws-kinesis-agg),
for the KPL de-aggregation tests.

Reads a JSON object from standard input:
  {"shards": [[start_hash_key, end_hash_key], ...],
   "records": [[partition_key, explicit_hash_key or null, data], ...],
   "per_aggregate": N, "mix": false}
and writes one JSON line per aggregate: {"pk", "ehk", "data_hex"}, to be put
with PutRecord as given. Like the KPL, it aggregates only user records bound
for the same shard (by explicit hash key, or the MD5 of the partition key),
at most N per aggregate, keeping their order. With "mix": true it packs
records of any keys together, as applications that use aws-kinesis-agg
directly do (the aggregate is routed by its first record's key).
"""

import hashlib
import json
import sys

from aws_kinesis_agg.aggregator import RecordAggregator


def hash_key(partition_key, explicit_hash_key):
    if explicit_hash_key is not None:
        return int(explicit_hash_key)
    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")


def main():
    request = json.load(sys.stdin)
    shards = [(int(start), int(end)) for start, end in request["shards"]]
    per_aggregate = int(request.get("per_aggregate", 25))
    mix = bool(request.get("mix", False))
    aggregators = {}
    counts = {}

    def emit(aggregated):
        pk, ehk, data = aggregated.get_contents()
        print(json.dumps({"pk": pk, "ehk": ehk, "data_hex": data.hex()}))

    for partition_key, explicit_hash_key, data in request["records"]:
        key = hash_key(partition_key, explicit_hash_key)
        if mix:
            shard = 0
        else:
            shard = next(i for i, (start, end) in enumerate(shards) if start <= key <= end)
        aggregator = aggregators.setdefault(shard, RecordAggregator())
        full = aggregator.add_user_record(partition_key, data.encode(), explicit_hash_key)
        if full is not None:
            emit(full)
            counts[shard] = 0
        counts[shard] = counts.get(shard, 0) + 1
        if counts[shard] >= per_aggregate:
            emit(aggregator.clear_and_get())
            counts[shard] = 0
    for shard, aggregator in aggregators.items():
        if aggregator.get_num_user_records() > 0:
            emit(aggregator.clear_and_get())


if __name__ == "__main__":
    main()
