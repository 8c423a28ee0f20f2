"""Latency of single calls to the service's HTTP API, one at a time, over
one keep-alive connection: what a cancel, a retry, a List page and a
/metrics scrape cost on a large database (bench/statements.sh fills it).

    python3 bench/statements.py PORT OPERATION IDS_FILE_OR_- COUNT

OPERATION: cancel or retry (one call per id read from the file), list-*
(the pages described in LISTS), scrape. Prints one line:
"OPERATION n=... p50=...ms p99=...ms max=...ms errors=...".
"""

import http.client
import json
import sys
import time

# name: (query, pages followed): every filter combination the API has,
# first pages and a walk of five pages with next_page_token.
LISTS = {
    "list-newest": ("page_size=50", 1),
    "list-pending": ("page_size=50&status=PENDING", 1),
    "list-failed": ("page_size=50&status=FAILED", 1),
    "list-novel": ("page_size=50&novel_id={novel}", 1),
    "list-novel-completed": ("page_size=50&novel_id={novel}&status=COMPLETED", 1),
    "list-walk": ("page_size=50&status=COMPLETED", 5),
}


def percentile(sorted_ms, share):
    index = min(len(sorted_ms) - 1, int(round(share * (len(sorted_ms) - 1))))
    return sorted_ms[index]


def main():
    port, operation, ids_path, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ids = [] if ids_path == "-" else [line.strip() for line in open(ids_path) if line.strip()]
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
    took, errors = [], 0

    def call(method, path):
        nonlocal errors
        started = time.perf_counter()
        conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        body = response.read()
        took.append((time.perf_counter() - started) * 1000)
        if response.status >= 300:
            errors += 1
            if errors <= 3:
                print(f"  {method} {path}: {response.status} {body[:200]!r}", file=sys.stderr)
        return body

    if operation in ("cancel", "retry"):
        for job in ids[:count]:
            call("POST", f"/api/v1/translation-jobs/{job}/{operation}")
    elif operation == "scrape":
        for _ in range(count):
            call("GET", "/metrics")
    elif operation in LISTS:
        query, pages = LISTS[operation]
        novel = ids[0] if ids else ""
        rounds = max(1, count // pages)
        for _ in range(rounds):
            token = ""
            for _ in range(pages):
                path = "/api/v1/translation-jobs?" + query.format(novel=novel)
                if token:
                    path += "&page_token=" + token
                page = json.loads(call("GET", path) or b"{}")
                token = page.get("next_page_token") or ""
                if not token:
                    break
    else:
        sys.exit(f"unknown operation {operation}")

    took.sort()
    print(
        f"{operation:<22} n={len(took):<4} p50={percentile(took, 0.5):.1f}ms "
        f"p99={percentile(took, 0.99):.1f}ms max={took[-1]:.1f}ms errors={errors}"
    )


if __name__ == "__main__":
    main()
