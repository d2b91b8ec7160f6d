"""The `meshserve` command line, the top of the house: it may import every package below it (the launcher,
scoring, deploy, samples, the contracts and the core), and nothing imports it."""

import os

# `meshserve up` starts its processes (fork, then exec) while gRPC's threads run; gRPC's fork handlers would only
# print "Other threads are currently calling into gRPC, skipping fork() handlers" on the user's terminal. No CLI
# command uses gRPC in a forked child. Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
