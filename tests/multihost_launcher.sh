#!/bin/bash
# ssh's stand-in for MPICH's launcher (-launcher ssh -launcher-exec THIS), for tests/multihost.py:
# `THIS [ssh options] HOST COMMAND...` runs COMMAND as ssh would on HOST: inside HOST's network
# namespace, with HOST as its hostname, on a core of its own (host N on core N-1, modulo the
# cores, so a rank's thread count is what it would be on a 1-core host).
while [[ $1 == -* ]]; do shift; done
host=$1
shift
core=$(( (${host#host} - 1) % $(nproc --all) ))
exec ip netns exec "${NANO2_NETNS_PREFIX}${host}" unshare --uts -- taskset -c "$core" bash -c "hostname $host && $*"
