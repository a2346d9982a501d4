"""Deletes the queues and exchanges of one AMQP prefix, as `memberline topology` names them.

Usage: memberline topology | python topology.py AMQP_URL
Run by tests/contract/run.sh when it stops, so a test run leaves nothing on the broker.
"""

import json
import sys

import pika

definitions = json.load(sys.stdin)
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
names = [("queue", q["name"]) for q in definitions["queues"]]
names += [("exchange", e["name"]) for e in definitions["exchanges"]]
for kind, name in names:
    try:
        if kind == "queue":
            channel.queue_delete(name)
        else:
            channel.exchange_delete(name)
    except pika.exceptions.ChannelClosedByBroker:
        # Already gone (or never declared): the broker closed the channel; go on with a new one.
        channel = connection.channel()
connection.close()
