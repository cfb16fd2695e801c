#!/usr/bin/env bash
# bench/promote-disk.sh: the peak extra disk of `gridship promote`, measured.
#
#   bench/promote-disk.sh DATA_MIB TARGETS [TARGETS...]
#
# Starts a session (tests/support/make-session: the debian fixture, sshd, a
# project, secrets) with DATA_MIB MiB of incompressible bytes in
# /home/bob/data (a protected home: slimming keeps it), then for each TARGETS
# (a --to list) runs `gridship promote` into an empty store, and once more
# after 16 MiB more were written in the session, into the store and --out the
# first left. The store, --out and TMPDIR are on a tmpfs of their own, whose
# `df` used bytes are sampled every 20 ms while promote runs: the peak over
# the value before the run is everything promote wrote there at its worst
# moment, temporary files included.
# The engine's side is on the engine's filesystem and not in the peak: the
# last column is what the engine keeps after the run for this session's
# snapshots (their commits' own layers: the session's SizeRw when it was
# taken), which promote reads from the engine's layer store instead of
# copying into the store.
#
# Env: GS (the gridship binary, default target/release/gridship), SITE
# (default glasgow), MNT (default /mnt/gridship-disk-bench; needs root to mount).
# Needs ci/setup's env (DOCKER_HOST). Prints two markdown table rows per TARGETS.
set -euo pipefail
data_mib=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)
GS=${GS:-$here/target/release/gridship}
SITE=${SITE:-glasgow}
MNT=${MNT:-/mnt/gridship-disk-bench}
docker=${GRIDSHIP_DOCKER:-docker}
session=gs-promote-disk-$$

mkdir -p "$MNT"
mountpoint -q "$MNT" || mount -t tmpfs -o size=$((data_mib * 10 + 4096))m tmpfs "$MNT"
cleanup() {
	[[ -n ${id12:-} ]] && cleanup_snapshots
	"$docker" rm -f "$session" >/dev/null 2>&1 || true
	umount "$MNT" 2>/dev/null || true
}
trap cleanup EXIT

"$here/tests/support/make-session" "$session" >/dev/null
"$docker" exec "$session" sh -c "mkdir -p /home/bob/data && head -c $((data_mib << 20)) /dev/urandom >/home/bob/data/random.bin && chown -R bob:bob /home/bob/data"
session_bytes=$("$docker" container inspect --size --format '{{.SizeRootFs}}' "$session")
rw_bytes=$("$docker" container inspect --size --format '{{.SizeRw}}' "$session")

used() { df -B1 --output=used "$MNT" | tail -1 | tr -d ' '; }
id12=$("$docker" container inspect --format '{{.Id}}' "$session" | cut -c1-12)
base_bytes=$("$docker" image inspect --format '{{.Size}}' "$("$docker" container inspect --format '{{.Image}}' "$session")")
# engine_kept: bytes of the snapshot commits the engine keeps for the session.
engine_kept() {
	local total=0 i
	for i in $("$docker" images -q "gridship-snapshot/$id12" | sort -u); do
		total=$((total + $("$docker" image inspect --format '{{.Size}}' "$i") - base_bytes))
	done
	echo "$total"
}
cleanup_snapshots() {
	"$docker" images --format '{{.Repository}}:{{.Tag}}' "gridship-snapshot/$id12" | xargs -r "$docker" rmi >/dev/null 2>&1 || true
}

echo "session: SizeRootFs $session_bytes bytes, SizeRw $rw_bytes bytes" >&2
echo "| --to | store before | session bytes | peak extra bytes | peak / session | left after bytes | left / session | store after | out after | seconds | engine keeps |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
# promote_row TO WHAT: one promote into the store and out dir as they are; one row.
promote_row() {
	local to=$1 what=$2 base peak start end after pid u
	sync
	base=$(used)
	peak=$base
	start=$(date +%s.%N)
	GRIDSHIP_STORE=$MNT/store TMPDIR=$MNT/tmp "$GS" -q --json promote "$session" --site "$SITE" \
		--to "$to" --out "$MNT/out" --tag bench --run 'python3 /work/project/main.py' \
		>"$MNT/report.json" 2>"$MNT/stderr" &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		u=$(used)
		((u > peak)) && peak=$u
		sleep 0.02
	done
	wait "$pid" || {
		cat "$MNT/stderr" >&2
		exit 1
	}
	end=$(date +%s.%N)
	after=$(used)
	session_bytes=$("$docker" container inspect --size --format '{{.SizeRootFs}}' "$session")
	awk -v to="$to" -v w="$what" -v s="$session_bytes" -v p="$((peak - base))" -v a="$((after - base))" \
		-v st="$(du -sb "$MNT/store" | cut -f1)" -v o="$(du -sb "$MNT/out" | cut -f1)" \
		-v t0="$start" -v t1="$end" -v e="$(engine_kept)" \
		'BEGIN { printf "| %s | %s | %.0f | %.0f | %.2f | %.0f | %.2f | %.0f | %.0f | %.1f | %.0f |\n", to, w, s, p, p / s, a, a / s, st, o, t1 - t0, e }'
}
for to in "$@"; do
	rm -rf "${MNT:?}"/*
	cleanup_snapshots
	mkdir -p "$MNT/store" "$MNT/out" "$MNT/tmp"
	promote_row "$to" empty
	# The session changes a little; the store keeps the first promote's snapshot.
	"$docker" exec "$session" sh -c "head -c $((16 << 20)) /dev/urandom >/home/bob/data/more-$to.bin"
	promote_row "$to" "the same session's snapshot, 16 MiB changed since"
done
