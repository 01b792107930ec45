#!/bin/sh
# Installs the Debian packages loraga needs when they are missing (as root: apt-get),
# otherwise says which are missing. Called by `make`, `make test` and `make demo`.
# OpenMPI is optional (data-parallel training, docs/mpi.md): installed as root, only mentioned
# otherwise; LORAGA_MPI=0 leaves it out.
set -e
PKGS="gcc make libopenblas-openmp-dev liblapacke-dev libcjson-dev libpcre2-dev libcmocka-dev libdnnl-dev libyaml-dev cmake pkg-config"
OPT_PKGS="libopenmpi-dev openmpi-bin"
[ "${LORAGA_MPI:-auto}" = 0 ] && OPT_PKGS=""
missing=""
for p in $PKGS $OPT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "loraga: installing missing packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing >/dev/null
else
    required=""
    for p in $missing; do
        case " $OPT_PKGS " in *" $p "*) ;; *) required="$required $p" ;; esac
    done
    if [ -z "$required" ]; then
        echo "loraga: note: building without MPI (optional; as root: apt-get install$missing)" >&2
        exit 0
    fi
    echo "loraga: missing Debian packages:$missing" >&2
    echo "        run as root: apt-get install$missing" >&2
    exit 1
fi
