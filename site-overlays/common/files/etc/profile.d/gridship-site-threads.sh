# gridship site overlay: size thread pools to the CPUs the batch system gave
# this job, so that OpenMP/BLAS/numexpr/Julia do not start one thread per core
# of a shared worker node. Sourced by login shells (/etc/profile.d) and by
# Apptainer (/.singularity.d/env/92-gridship-site.sh). POSIX sh (dash); a
# variable that is already set is left alone.
#
# Where the count comes from, first found wins:
#   OMP_NUM_THREADS      HTCondor sets it to the slot's CPUs itself
#   HTCondor machine ad  Cpus in $_CONDOR_MACHINE_AD or $_CONDOR_SCRATCH_DIR/.machine.ad
#   Slurm                SLURM_CPUS_PER_TASK, else SLURM_JOB_CPUS_PER_NODE ("8(x2)" -> 8)
#   PBS/Torque           PBS_NUM_PPN, else NCPUS (PBS Pro)
#   nproc                the CPUs this process may run on (cpuset/affinity)
# ARC passes the job's count to the batch system and exports no count of its
# own, so inside an ARC job one of the batch system's variables applies.
_gs_n=""
_gs_from=""
_gs_try() {
    # $1: candidate count, $2: where from; takes it if it is a positive integer.
    [ -z "$_gs_n" ] || return 0
    case "$1" in
        '' | *[!0-9]* | 0 | 0*) return 0 ;;
    esac
    _gs_n=$1
    _gs_from=$2
}
_gs_ad_cpus() {
    [ -n "$1" ] && [ -r "$1" ] || return 0
    sed -n 's/^[Cc]pus[[:space:]]*=[[:space:]]*\([0-9][0-9]*\)[[:space:]]*$/\1/p' "$1" 2>/dev/null | head -n 1
}
_gs_try "${OMP_NUM_THREADS:-}" OMP_NUM_THREADS
_gs_try "$(_gs_ad_cpus "${_CONDOR_MACHINE_AD:-}")" htcondor
[ -z "${_CONDOR_SCRATCH_DIR:-}" ] || _gs_try "$(_gs_ad_cpus "$_CONDOR_SCRATCH_DIR/.machine.ad")" htcondor
_gs_try "${SLURM_CPUS_PER_TASK:-}" slurm
_gs_v=${SLURM_JOB_CPUS_PER_NODE:-}
_gs_try "${_gs_v%%[!0-9]*}" slurm
_gs_try "${PBS_NUM_PPN:-}" pbs
_gs_try "${NCPUS:-}" pbs
_gs_try "$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)" nproc
if [ -n "$_gs_n" ]; then
    for _gs_v in OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS \
        NUMEXPR_NUM_THREADS NUMEXPR_MAX_THREADS JULIA_NUM_THREADS; do
        eval "[ -n \"\${$_gs_v:-}\" ] || export $_gs_v=\$_gs_n"
    done
    export GRIDSHIP_JOB_CPUS="$_gs_n" GRIDSHIP_JOB_CPUS_FROM="$_gs_from"
fi
unset _gs_n _gs_from _gs_v
unset -f _gs_try _gs_ad_cpus
