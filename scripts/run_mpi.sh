#!/usr/bin/env bash
# Run nano2 data-parallel under MPI, on this machine or across several.
#
#   NP=2 ./scripts/run_mpi.sh                          2 ranks here (training configs/tiny.json)
#   ./scripts/run_mpi.sh -H node1,node2 -N 2           2 ranks on each of node1 and node2
#   ./scripts/run_mpi.sh --hostfile hosts -N 1 -- nano2_fwbw --config configs/nano2.json
#
# Launcher flags come first; after `--` comes the command (default: nano2_train --config
# configs/tiny.json), looked up in .venv/bin. -H HOSTS, -N RANKS_PER_NODE and --hostfile FILE
# are translated for MPICH's mpiexec (hydra: -hosts, -ppn, -f); other flags pass through.
# MPIEXEC picks the launcher (default: the one the mpich wheel put in .venv/bin; set
# MPIEXEC=mpirun for a cluster's Open MPI or Intel MPI, whose mpi4py must then be built
# against it: pip install --no-binary mpi4py mpi4py).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh --if-needed
MPIEXEC=${MPIEXEC:-.venv/bin/mpiexec}
if "$MPIEXEC" --version 2>&1 | grep -q "Open MPI"; then flavour=openmpi; else flavour=hydra; fi

launcher=() command=() hosts="" hostfile="" per_node="" np=""
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; command=("$@"); break ;;
        -H|--host|-hosts) hosts=$2; shift 2 ;;
        -N|-ppn|--npernode) per_node=$2; shift 2 ;;
        --hostfile|-hostfile|-f|--machinefile) hostfile=$2
            launcher+=("$([ $flavour = hydra ] && echo -f || echo --hostfile)" "$2"); shift 2 ;;
        -n|-np) np=$2; shift 2 ;;
        *) launcher+=("$1"); shift ;;
    esac
done
if [ -n "$hosts" ]; then
    launcher+=("$([ $flavour = hydra ] && echo -hosts || echo -H)" "$hosts")
fi
if [ -n "$per_node" ]; then
    launcher+=("$([ $flavour = hydra ] && echo -ppn || echo -N)" "$per_node")
fi
if [ -z "$np" ]; then
    if [ -n "$hosts" ] && [ -n "$per_node" ]; then
        np=$(( $(tr ',' '\n' <<<"$hosts" | grep -c .) * per_node ))
    elif [ -n "$hostfile" ] && [ -n "$per_node" ]; then  # one host per line; # starts a comment
        np=$(( $(sed 's/#.*//' "$hostfile" | grep -c '[^[:space:]]') * per_node ))
    else
        np=${NP:-2}
    fi
fi
if [ $flavour = openmpi ] && [ "$(id -u)" = 0 ]; then
    launcher+=(--allow-run-as-root)
fi
if [ ${#command[@]} -eq 0 ]; then
    command=(nano2_train --config configs/tiny.json)
fi
if [ -x ".venv/bin/${command[0]}" ]; then
    command[0]=".venv/bin/${command[0]}"
fi
echo "+ $MPIEXEC -n $np ${launcher[*]} ${command[*]}" >&2
exec "$MPIEXEC" -n "$np" "${launcher[@]}" "${command[@]}"
