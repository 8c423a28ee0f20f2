"""Redis's CPU per message of the relay's push script (src/queue/push.lua),
next to the floors it is built on, on a redis-server of its own: rounds of
500 messages of 180 bytes with consecutive outbox ids, as a drain sends
them. Run through bench/push_script.sh."""

import os
import random
import socket
import struct
import sys

SCRIPT, PORT, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
BATCH = 500
BLOCK_IDS = 1000  # MARKER_BLOCK_IDS
PAYLOAD = ('{"job_id":"0192a5c2-7e1d-7000-8000-%012d","target_lang":"en","source_lang":"ja",'
           '"output_dir":"outputs/novel_jobs","target_fields":["title","description","content"]}')

sock = socket.create_connection(("127.0.0.1", PORT))
replies = sock.makefile("rb")


def command(*args):
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    sock.sendall(b"".join(parts))
    return read()


def read():
    line = replies.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind in (b"+", b":"):
        return int(rest) if kind == b":" else rest
    if kind == b"$":
        return None if int(rest) < 0 else replies.read(int(rest) + 2)[:-2]
    return None if int(rest) < 0 else [read() for _ in range(int(rest))]


pid = int(command("INFO", "server").decode().split("process_id:")[1].split()[0])


def cpu_ns():
    tasks = "/proc/%d/task" % pid
    return sum(int(open("%s/%s/schedstat" % (tasks, t)).read().split()[0]) for t in os.listdir(tasks))


def push_arguments(queue, ids, tokens):
    """KEYS and ARGV as src/queue/push.rs builds them, one lane."""
    keys = ["{%s}:state" % queue, queue]
    markers, runs, meta = {}, [], bytearray()
    for outbox_id, token in zip(ids, tokens):
        block, offset = divmod(outbox_id, BLOCK_IDS)
        offset *= 4
        if block not in markers:
            keys.append("{%s}:pushed:%d" % (queue, block))
            markers[block] = len(keys)
        marker = markers[block]
        if runs and runs[-1][0] == marker and runs[-1][1] + 4 * runs[-1][2] == offset:
            runs[-1][2] += 1
        else:
            runs.append([marker, offset, 1])
        meta += struct.pack(">HHi", marker, offset, token)
    packed_runs = b"".join(struct.pack(">HHH", *run) for run in runs)
    packed_tokens = b"".join(struct.pack(">i", token) for token in tokens)
    args = ["1", 3600, BLOCK_IDS * 4, 1, "normal", len(ids), packed_runs, packed_tokens, bytes(meta)]
    return keys, args + [PAYLOAD % i for i in ids]


def measure(name, queue, send):
    command("DEL", queue)
    command("HSET", "{%s}:state" % queue, "generation", "1")
    spent = 0
    for round_ in range(ROUNDS):
        ids = list(range(1 + round_ * BATCH, 1 + (round_ + 1) * BATCH))
        tokens = [random.randint(1, 2**31 - 1) for _ in ids]
        spent += send(queue, ids, tokens)
    print("%-34s %.2f us per message" % (name, spent / 1000 / (ROUNDS * BATCH)))


sha = command("SCRIPT", "LOAD", open(SCRIPT).read()).decode()
rpush_only = command("SCRIPT", "LOAD", "return redis.call('RPUSH', KEYS[2], unpack(ARGV, 10))").decode()


def timed(*args):
    """Sends one command; Redis's CPU time for it, in ns."""
    before = cpu_ns()
    reply = command(*args)
    return cpu_ns() - before, reply


def rpush(queue, ids, tokens):
    return timed("RPUSH", queue, *[PAYLOAD % i for i in ids])[0]


def script_rpush_only(queue, ids, tokens):
    keys, args = push_arguments(queue, ids, tokens)
    return timed("EVALSHA", rpush_only, len(keys), *keys, *args)[0]


def script(queue, ids, tokens):
    keys, args = push_arguments(queue, ids, tokens)
    spent, reply = timed("EVALSHA", sha, len(keys), *keys, *args)
    assert reply[0] == 1 and len(reply) == 2, "one lane, nothing skipped: %r" % reply[:4]
    return spent


def script_retry(queue, ids, tokens):
    """The same batch pushed twice: only the second call counts."""
    keys, args = push_arguments(queue, ids, tokens)
    command("EVALSHA", sha, len(keys), *keys, *args)
    spent, reply = timed("EVALSHA", sha, len(keys), *keys, *args)
    assert len(reply) == 2 + len(ids), "every message skipped"
    return spent


measure("RPUSH of the batch (the floor)", "bench_push_floor", rpush)
measure("a script that only RPUSHes it", "bench_push_eval", script_rpush_only)
measure("push.lua, a fresh batch", "bench_push_fresh", script)
measure("push.lua, a retried batch", "bench_push_retry", script_retry)
