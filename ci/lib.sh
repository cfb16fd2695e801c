# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# ci/lib.sh: shared functions for the ci/ scripts. Source it, do not run it.
#
# Contract (see ci/setup):
#   GRIDSHIP_CI_STATE  state of the test services (default /var/lib/gridship-ci)
#   GRIDSHIP_CI_CACHE  long-lived caches, e.g. the debootstrap tarball
#                      (default /var/cache/gridship-ci)
#   $GRIDSHIP_CI_STATE/env  `export VAR=value` lines written by ci/setup
#
# Everything this file logs goes to stderr; stdout is left to the scripts.

set -euo pipefail

CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CI_DIR/.." && pwd)"
CI_NAME="ci/$(basename "$0")"

: "${GRIDSHIP_CI_STATE:=/var/lib/gridship-ci}"
: "${GRIDSHIP_CI_CACHE:=/var/cache/gridship-ci}"
export GRIDSHIP_CI_STATE GRIDSHIP_CI_CACHE
CI_ENV_FILE="$GRIDSHIP_CI_STATE/env"

# Test registries. Fixed by the test contract; only change them together with tests/.
CI_REGISTRY_HOST=127.0.0.1
CI_REGISTRY_PORT=5000
CI_REGISTRY_TLS_PORT=5443
CI_REGISTRY_USER=gridship
CI_REGISTRY_PASSWORD=gridship-test-password

# The engine socket ci/setup starts dockerd on when nothing answers.
CI_DEFAULT_DOCKER_HOST=unix:///var/run/docker.sock

# ---------------------------------------------------------------- logging

log() { printf '[%s %s] %s\n' "$CI_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
warn() { log "WARNING: $*"; }
die() {
	log "ERROR: $*"
	exit 1
}

# run CMD...: log the command, then run it.
run() {
	log "+ $*"
	"$@"
}

# show_tail FILE [N]: print the last N lines of FILE to stderr, indented.
show_tail() {
	local file=$1 n=${2:-30}
	if [[ -r $file ]]; then
		log "last $n lines of $file:"
		tail -n "$n" "$file" | sed 's/^/    | /' >&2
	fi
}

# fmt_duration SECONDS -> "1m23s"
fmt_duration() {
	local s=$1
	if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# ---------------------------------------------------------------- exit hooks

CI_EXIT_HOOKS=()
CI_EXIT_STATUS=
_ci_run_exit_hooks() {
	local rc=$? i
	CI_EXIT_STATUS=$rc
	for ((i = ${#CI_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
		eval "${CI_EXIT_HOOKS[i]}" || true
	done
	return "$rc"
}
trap _ci_run_exit_hooks EXIT

# on_exit 'shell code': run at exit, last registered first; $CI_EXIT_STATUS holds the status.
on_exit() { CI_EXIT_HOOKS+=("$1"); }

# ---------------------------------------------------------------- misc helpers

need_root() {
	[[ $EUID -eq 0 ]] || die "$CI_NAME must run as root (it installs packages and starts system services)"
}

# ci_lock: serialise the ci/ scripts that change this machine's test services (ci/setup,
# ci/fixtures, ci/apptainer, ci/cvmfs, ci/arex start) across concurrent runs.
# The lock is an flock on an fd (its number exported as GRIDSHIP_CI_LOCK_FD) of
# $GRIDSHIP_CI_STATE/.lock. Child scripts inherit the fd and GRIDSHIP_CI_LOCK_HELD=1
# and do not lock again (they would wait for their own parent). Every process that
# inherits the fd keeps the lock while it lives: start long-lived daemons (and
# commands that start them: mount, service, cvmfs_server) with spawn_detached or
# without_lock, never directly.
ci_lock() {
	if [[ ${GRIDSHIP_CI_LOCK_HELD:-} == 1 ]] && _ci_lock_fd_open "${GRIDSHIP_CI_LOCK_FD:-}"; then
		return 0
	fi
	mkdir -p "$GRIDSHIP_CI_STATE"
	local holders
	exec {CI_LOCK_FD}>"$GRIDSHIP_CI_STATE/.lock"
	if ! flock -n "$CI_LOCK_FD"; then
		holders=$(lock_holders | sed 's/^/pid /' | paste -sd, - | sed 's/,/, /g')
		log "another ci/ script holds $GRIDSHIP_CI_STATE/.lock${holders:+ (open in: $holders)}; waiting (up to 30 min)"
		if ! flock -w 1800 "$CI_LOCK_FD"; then
			holders=$(lock_holders | sed 's/^/pid /' | paste -sd, - | sed 's/,/, /g')
			die "timed out waiting for $GRIDSHIP_CI_STATE/.lock${holders:+; it is open in $holders (a daemon started without without_lock keeps it until it exits)}"
		fi
	fi
	GRIDSHIP_CI_LOCK_FD=$CI_LOCK_FD
	export GRIDSHIP_CI_LOCK_HELD=1 GRIDSHIP_CI_LOCK_FD
	on_exit _ci_lock_check_leaks
}

# _ci_lock_fd_open FD: FD is open in this shell on $GRIDSHIP_CI_STATE/.lock.
_ci_lock_fd_open() {
	local fd=$1 target
	[[ $fd =~ ^[0-9]+$ ]] || return 1
	target=$(readlink "/proc/$BASHPID/fd/$fd" 2>/dev/null) || return 1
	[[ $target == "$(readlink -f "$GRIDSHIP_CI_STATE/.lock")" ]]
}

# lock_holders: "PID (COMMAND LINE)" of the processes that have $GRIDSHIP_CI_STATE/.lock
# open, but this shell and its children (they share its fd). Other ci/ scripts waiting
# for the lock are among them.
lock_holders() {
	local lock f pid p cmd
	lock=$(readlink -f "$GRIDSHIP_CI_STATE/.lock")
	{ find /proc/[0-9]*/fd -maxdepth 1 -lname "$lock" 2>/dev/null || true; } | while read -r f; do
		pid=${f#/proc/}
		pid=${pid%%/*}
		p=$pid
		while [[ -n $p && $p != 0 && $p != 1 && $p != "$$" ]]; do
			p=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
		done
		# ours (a child of this shell), or gone meanwhile
		[[ -z $p || $p == "$$" ]] && continue
		cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
		printf '%s (%s)\n' "$pid" "$(cut -c1-120 <<<"$cmd" | sed 's/ *$//')"
	done | sort -un
	return 0
}

# At the exit of the script that took the lock: a process other than a ci/ script
# still holding the lock file open (a daemon started with the fd) keeps the lock, and
# every later ci/ script would wait for it.
_ci_lock_check_leaks() {
	local leaks
	leaks=$(lock_holders | grep -Ev '^[0-9]+ \(([^ ]*/)?bash ([^ ]*/)?ci/[a-z]+( .*)?\)$' || true)
	[[ -z $leaks ]] && return 0
	warn "still open in processes that outlive $CI_NAME, which keep $GRIDSHIP_CI_STATE/.lock locked (start daemons with without_lock or spawn_detached): $(paste -sd';' - <<<"$leaks")"
}

# without_lock CMD...: run CMD (a command or function) without this script's lock fd,
# and without GRIDSHIP_CI_LOCK_HELD: for anything that starts a daemon which outlives
# the script (service apache2 start, mount -t cvmfs, cvmfs_server mkfs/mount/publish,
# which start cvmfs2 FUSE daemons). Not for ci/ scripts: they would wait for the lock
# this script holds.
without_lock() {
	local fd=${GRIDSHIP_CI_LOCK_FD:-}
	if ! _ci_lock_fd_open "$fd"; then
		"$@"
		return
	fi
	if [[ $(type -t "$1") == function ]]; then
		(
			unset GRIDSHIP_CI_LOCK_HELD GRIDSHIP_CI_LOCK_FD
			"$@"
		) {fd}>&-
	else
		env -u GRIDSHIP_CI_LOCK_HELD -u GRIDSHIP_CI_LOCK_FD "$@" {fd}>&-
	fi
}

# spawn_detached PIDFILE LOGFILE CMD...: start a long-lived service in its own session
# (it outlives this script and the job's process group), stdin from /dev/null, output
# appended to LOGFILE, without this script's lock fd; record its pid in PIDFILE.
spawn_detached() {
	local pidfile=$1 logfile=$2
	shift 2
	printf '\n==== %s %s starts: %s\n' "$(date -Is)" "$CI_NAME" "$*" >>"$logfile"
	(
		# exec all the way down: $! is the service's own pid.
		fd=${GRIDSHIP_CI_LOCK_FD:-}
		if _ci_lock_fd_open "$fd"; then exec {fd}>&-; fi
		unset GRIDSHIP_CI_LOCK_HELD GRIDSHIP_CI_LOCK_FD
		exec setsid "$@" >>"$logfile" 2>&1 </dev/null
	) &
	echo $! >"$pidfile"
	disown $! 2>/dev/null || true
}

# wait_until TIMEOUT_S CMD...: retry CMD every 0.5 s until it succeeds or the time is up.
wait_until() {
	local timeout=$1
	shift
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

# wait_service PIDFILE TIMEOUT_S CMD...: wait until CMD succeeds while the process in
# PIDFILE lives. Status 0: up; 1: timed out; 2: the process exited.
wait_service() {
	local pidfile=$1 timeout=$2
	shift 2
	local deadline=$((SECONDS + timeout)) pid
	pid=$(<"$pidfile")
	until "$@" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || return 2
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

# pid_alive PIDFILE NAME: the pid in PIDFILE runs and its command line mentions NAME.
pid_alive() {
	local pidfile=$1 name=$2 pid
	[[ -s $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

# write_if_changed DEST: write stdin to DEST atomically; status 0 when DEST changed.
write_if_changed() {
	local dest=$1 tmp
	tmp=$(mktemp "$dest.XXXXXX")
	cat >"$tmp"
	if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
		rm -f "$tmp"
		return 1
	fi
	chmod 0644 "$tmp"
	mv -f "$tmp" "$dest"
	return 0
}

# sha256_of FILE...: hash of the files' contents (one hex string).
sha256_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- debootstrap

# apt_mirror SUITE: the first deb URI apt uses for SUITE (deb822 .sources or one-line .list).
apt_mirror() {
	local suite=$1 f uri=
	if [[ -n ${GRIDSHIP_DEBIAN_MIRROR:-} ]]; then
		printf '%s\n' "${GRIDSHIP_DEBIAN_MIRROR%/}"
		return 0
	fi
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[[ -r $f ]] || continue
		if [[ $f == *.sources ]]; then
			uri=$(awk -v want="$suite" '
				function flush(   n, i, s, u) {
					if (!found && types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
						n = split(suites, s, /[ \t]+/)
						for (i = 1; i <= n; i++) if (s[i] == want) { split(uris, u, /[ \t]+/); print u[1]; found = 1; break }
					}
					types = uris = suites = ""; enabled = "yes"
				}
				BEGIN { enabled = "yes" }
				/^[ \t]*#/ { next }
				/^[ \t]*$/ { flush(); next }
				/^[A-Za-z-]+:/ {
					key = tolower($0); sub(/:.*/, "", key)
					val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
					if (key == "types") types = val
					else if (key == "uris") uris = val
					else if (key == "suites") suites = val
					else if (key == "enabled") enabled = tolower(val)
				}
				END { flush() }' "$f")
		else
			uri=$(awk -v want="$suite" '
				$1 == "deb" {
					i = 2
					if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
					if ($(i + 1) == want) { print $i; exit }
				}' "$f")
		fi
		if [[ -n $uri ]]; then
			printf '%s\n' "${uri%/}"
			return 0
		fi
	done
	printf '%s\n' http://deb.debian.org/debian
}

# cleanup_build_dir DIR: unmount what debootstrap may have left below DIR, then remove it.
cleanup_build_dir() {
	local dir=$1 m
	[[ -d $dir ]] || return 0
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
	rm -rf --one-file-system "$dir"
}

# ---------------------------------------------------------------- docker

# docker_client_for HOST: print the docker client that talks to the engine on HOST.
# Prefers Debian's /usr/bin/docker (same release as Debian's dockerd, 20.10); any other
# `docker` on PATH (e.g. the 28.x client in /usr/local/bin) is only a fallback.
docker_client_for() {
	local host=$1 c
	local -a candidates=()
	[[ -n ${GRIDSHIP_DOCKER:-} ]] && candidates+=("$GRIDSHIP_DOCKER")
	candidates+=(/usr/bin/docker)
	c=$(command -v docker 2>/dev/null || true)
	[[ -n $c ]] && candidates+=("$c")
	for c in "${candidates[@]}"; do
		[[ -x $c ]] || continue
		if DOCKER_HOST=$host timeout 20 "$c" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
			printf '%s\n' "$c"
			return 0
		fi
	done
	return 1
}

# dk ARGS...: the selected docker client (GRIDSHIP_DOCKER) against DOCKER_HOST.
dk() {
	[[ -n ${GRIDSHIP_DOCKER:-} ]] || die "internal: GRIDSHIP_DOCKER is not set (source the env file first)"
	"$GRIDSHIP_DOCKER" "$@"
}

# ---------------------------------------------------------------- registries

# registry_url HOSTPORT: http:// for the plain port, https:// otherwise.
registry_url() {
	if [[ $1 == "$CI_REGISTRY_HOST:$CI_REGISTRY_PORT" ]]; then
		printf 'http://%s\n' "$1"
	else
		printf 'https://%s\n' "$1"
	fi
}

# registry_curl HOSTPORT CURL_ARGS...: curl against a test registry, trusting the test CA.
registry_curl() {
	local hp=$1
	shift
	local -a tls=()
	if [[ $(registry_url "$hp") == https://* ]]; then
		tls=(--cacert "${GRIDSHIP_TEST_REGISTRY_CA:-$GRIDSHIP_CI_STATE/tls/ca/ca.crt}")
	fi
	curl -s --max-time 10 "${tls[@]}" "$@"
}

# registry_status HOSTPORT PATH [curl args]: HTTP status code of a GET (000 when nothing answers).
registry_status() {
	local hp=$1 path=$2
	shift 2
	registry_curl "$hp" -o /dev/null -w '%{http_code}' "$@" "$(registry_url "$hp")$path" || true
}

# registry_has_manifest HOSTPORT REPO TAG
registry_has_manifest() {
	local code
	code=$(registry_status "$1" "/v2/$2/manifests/$3" -I \
		-u "$CI_REGISTRY_USER:$CI_REGISTRY_PASSWORD" \
		-H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
		-H 'Accept: application/vnd.oci.image.manifest.v1+json' \
		-H 'Accept: application/vnd.oci.image.index.v1+json' \
		-H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json')
	[[ $code == 200 ]]
}

# ---------------------------------------------------------------- env file

# load_env: source the env file ci/setup wrote.
load_env() {
	[[ -r $CI_ENV_FILE ]] || die "$CI_ENV_FILE is missing: run ci/setup first"
	# shellcheck disable=SC1090
	source "$CI_ENV_FILE"
	[[ -n ${GRIDSHIP_DOCKER:-} && -n ${DOCKER_HOST:-} ]] || die "$CI_ENV_FILE lacks GRIDSHIP_DOCKER/DOCKER_HOST: run ci/setup again"
}

# setup_and_load_env: run ci/setup (idempotent, seconds when warm) and source its env file.
setup_and_load_env() {
	local env_file
	env_file=$("$CI_DIR/setup") || die "ci/setup failed"
	[[ -r $env_file ]] || die "ci/setup printed '$env_file', which is not a readable file"
	CI_ENV_FILE=$env_file
	load_env
}

# ensure_cargo: put rustup's cargo on PATH when a CI runner's PATH lacks it.
ensure_cargo() {
	if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
		PATH="$HOME/.cargo/bin:$PATH"
		export PATH
	fi
	command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH"
}
