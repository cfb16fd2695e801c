#!/usr/bin/env bash
# bench/same-output.sh OLD NEW: the reproducible fixtures through two gridship binaries (a
# refactor's before and after): SIF and tar digests side by side, and the CVMFS trees compared
# file by file (type, mode, owner, size, link target, content). Needs ci/setup's fixtures.
set -u
source /var/lib/gridship-ci/env
export SOURCE_DATE_EPOCH=1767225600
w=$(mktemp -d /tmp/gridship-same-output.XXXXXX)
for which in old new; do
  bin=$1; [ $which = new ] && bin=$2
  for fx in busybox debian pip-cuda; do
    GRIDSHIP_STORE=$w/store-$which $bin -q sif oci:/var/lib/gridship-ci/fixtures/$fx-oci:1 $w/$which-$fx.sif >/dev/null 2>$w/$which-$fx.err || echo "$which $fx sif failed"
  done
  GRIDSHIP_STORE=$w/store-$which $bin -q sif --world-readable oci:/var/lib/gridship-ci/fixtures/debian-oci:1 $w/$which-debian-wr.sif >/dev/null 2>>$w/$which-debian.err || echo "$which wr sif failed"
  GRIDSHIP_STORE=$w/store-$which $bin -q export oci:/var/lib/gridship-ci/fixtures/debian-oci:1 $w/$which-debian.tar >/dev/null 2>>$w/$which-debian.err || echo "$which export failed"
  GRIDSHIP_STORE=$w/store-$which $bin -q cvmfs publish oci:/var/lib/gridship-ci/fixtures/debian-oci:1 --name reg.example/debian:1 --layers --podman --backend dir --root $w/cvmfs-$which --repo cmp.example.org >/dev/null 2>$w/$which-cvmfs.err || { echo "$which cvmfs failed"; tail -3 $w/$which-cvmfs.err; }
  GRIDSHIP_STORE=$w/store-$which $bin -q cvmfs publish --world-readable oci:/var/lib/gridship-ci/fixtures/pip-cuda-oci:1 --name reg.example/cuda:1 --backend dir --root $w/cvmfs-$which --repo cmp.example.org >/dev/null 2>>$w/$which-cvmfs.err || { echo "$which cvmfs wr failed"; tail -3 $w/$which-cvmfs.err; }
done
for f in busybox.sif debian.sif pip-cuda.sif debian-wr.sif debian.tar; do
  echo "$f: $(sha256sum < $w/old-$f | cut -c1-16) $(sha256sum < $w/new-$f | cut -c1-16)"
done
# file by file: content, mode, owner, link target
list() { (cd "$1" && { find . -type d -printf '%p %M %U:%G dir\n'; find . ! -type d -printf '%p %M %U:%G %s %l\n'; } | sort); }
if diff <(list $w/cvmfs-old) <(list $w/cvmfs-new) >/dev/null && diff -r --no-dereference $w/cvmfs-old $w/cvmfs-new >/dev/null; then
  echo "cvmfs trees (directory sizes on disk aside): equal file by file ($(list $w/cvmfs-old | wc -l) entries)"
else
  echo "cvmfs trees differ:"; diff <(list $w/cvmfs-old) <(list $w/cvmfs-new) | head -20
fi
# promote of an image (no session: the snapshot is the image itself), every kind but the
# smoke run checks (no GPU): the SIF, the job descriptions and the CVMFS tree.
for which in old new; do
  bin=$1; [ $which = new ] && bin=$2
  GRIDSHIP_STORE=$w/pstore-$which $bin -q --json promote oci:/var/lib/gridship-ci/fixtures/debian-oci:1 \
    --site glasgow --to sif,cvmfs,oci --tag t1 --name deb --run true --out $w/promote-$which \
    --cvmfs-repo promoted.test --cvmfs-root $w/promote-$which/cvmfs > $w/promote-$which.json 2>$w/promote-$which.err \
    || { echo "$which promote failed"; tail -3 $w/promote-$which.err; }
done
for f in deb.sif deb.xrsl deb.adl; do
  echo "promote $f: $(sha256sum < $w/promote-old/$f | cut -c1-16) $(sha256sum < $w/promote-new/$f | cut -c1-16)"
done
if diff <(list $w/promote-old/cvmfs) <(list $w/promote-new/cvmfs) >/dev/null && diff -r --no-dereference $w/promote-old/cvmfs $w/promote-new/cvmfs >/dev/null; then
  echo "promote cvmfs trees: equal file by file ($(list $w/promote-old/cvmfs | wc -l) entries)"
else
  echo "promote cvmfs trees differ"
fi
keys() { jq -c '[paths(scalars) | map(if type == "number" then 0 else . end) | join(".")] | unique' "$1"; }
[ "$(keys $w/promote-old.json)" = "$(keys $w/promote-new.json)" ] && echo "promote --json: the same fields" || echo "promote --json: fields differ"
rm -rf "$w"
