"""Deploy a Python closure on a local Schooner cluster and query it over HTTP.

    python examples/quickstart.py            # starts a cluster, deploys, queries, stops it
    python examples/quickstart.py --keep     # leave the cluster running (stop: schooner stop)
"""

from __future__ import annotations

import argparse
import json
import urllib.request

from schooner.admin import ClipperConnection, LocalContainerManager
from schooner.admin.deployers import python as python_deployer


def predict_sum(inputs):
    """The model: one string per input (Clipper's contract)."""
    return [str(sum(x)) for x in inputs]


def query(addr: str, app: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://{addr}/{app}/predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()

    conn = ClipperConnection(LocalContainerManager())
    conn.start_clipper()
    try:
        python_deployer.create_endpoint(conn, name="sum", input_type="doubles", func=predict_sum)
        addr = conn.get_query_addr()
        print("POST /sum/predict {'input': [1.0, 2.0]} ->", query(addr, "sum", {"input": [1.0, 2.0]}))
        print("POST /sum/predict input_batch ->",
              query(addr, "sum", {"input_batch": [[1.0, 2.0], [3.0, 4.5]]}))
        print("replicas:", conn.get_num_replicas("sum"), "| apps:", conn.get_all_apps())
    finally:
        if not args.keep:
            conn.stop_all()


if __name__ == "__main__":
    main()
