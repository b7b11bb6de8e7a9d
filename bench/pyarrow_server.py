"""The baseline Flight servers for bench.py, run in their own process so they do not share the
client's interpreter:

- do_put reads every batch of the stream and drops it (the transport ceiling's baseline);
- do_get serves the Parquet file the ticket names as `RecordBatchStream(pq.read_table(path))`.

Usage: python bench/pyarrow_server.py PORT
"""

import sys

import pyarrow.flight as fl
import pyarrow.parquet as pq


class Baseline(fl.FlightServerBase):
    def do_put(self, context, descriptor, reader, writer):
        for _ in reader:
            pass

    def do_get(self, context, ticket):
        return fl.RecordBatchStream(pq.read_table(ticket.ticket.decode()))


if __name__ == "__main__":
    server = Baseline(f"grpc://127.0.0.1:{sys.argv[1]}")
    server.serve()
